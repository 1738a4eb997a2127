"""A worker whose broker goes away (issue 14): it reconnects when Redis comes back; when its
consumer cannot go on, it stops with a non-zero status so that its supervisor restarts it
(ops/keepalive.py under `make run`, `restart:` in compose); and it does not die in kombu's
restore of unacknowledged messages (workers/broker.py).

Each test has a Redis of its own for the broker (a throwaway `redis-server`), so it can stop
and break while the suite's Redis (events, cancels, caches) stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from db.session import Database
from tests.conftest import ROOT, free_port, make_committed_user
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker, start_double, wait_for
from tests.pipeline.jobs import finished, read, submit, wait_status
from tests.support.identity import bearer
from web import create_app


class Broker:
    """A `redis-server` on a port of its own that keeps its data across restarts (AOF, as
    compose's Redis does)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, timeout=10
        )
        return done.stdout.decode().strip()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.cli("ping") == "PONG", timeout=10)

    def stop(self) -> None:
        """SHUTDOWN, as `docker restart` asks for it: the AOF keeps every key."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = Broker(tmp_path)
    server.start()
    yield server
    server.stop()


# --- kombu's restore of unacknowledged messages on a closed transport ------------------


def _consume_one_and_lose_the_broker(broker: Broker, transport: str | None) -> tuple[Any, ...]:
    """What a Celery worker holds when Redis goes away: a task channel with one message
    delivered and not acknowledged (acks_late) and its next BRPOP in flight, beside the
    pidbox's channel with its auto-delete fanout queue; then Redis stops."""
    options = {"transport": transport} if transport else {}
    queue = Queue("jobs", Exchange("jobs", "direct"), "jobs")
    with Connection(broker.url, **options) as publisher:
        Producer(publisher).publish(
            {"job": 1}, exchange=queue.exchange, routing_key="jobs", declare=[queue]
        )
    connection = Connection(broker.url, **options)
    delivered: list[Message] = []
    tasks = connection.default_channel
    Consumer(tasks, [queue], callbacks=[lambda _, m: delivered.append(m)], no_ack=False).consume()
    pidbox = connection.channel()
    control = Queue("w@test.pidbox", Exchange("pidbox", "fanout"), auto_delete=True, durable=False)
    Consumer(pidbox, [control], callbacks=[lambda *_: None], no_ack=True).consume()
    deadline = time.monotonic() + 5
    while not delivered and time.monotonic() < deadline:
        connection.drain_events(timeout=1)  # may return for the pidbox's subscription
    assert len(delivered) == 1
    tasks._brpop_start()
    broker.stop()
    return connection, delivered[0]


def _lose_the_connection_as_celery_does(connection: Connection) -> None:
    """celery.worker.consumer.Consumer.on_connection_error_after_connected (celery 5.7.0):
    collect() with its errors ignored, then close() under kombu's ignore_errors, which lets
    anything but a connection or channel error through ("Unrecoverable error")."""
    with contextlib.suppress(Exception):
        connection.collect(socket_timeout=5)
    try:
        connection.close()
    except connection.connection_errors + connection.channel_errors:
        pass


def test_kombus_own_transport_still_crashes_on_a_closed_transport(broker: Broker) -> None:
    """The upstream bug, kept as a canary: once a kombu release passes this sequence, the
    reason for the eager client in workers/broker.py is gone (its docstring says why)."""
    connection, _ = _consume_one_and_lose_the_broker(broker, None)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'hostname'"):
        _lose_the_connection_as_celery_does(connection)


def test_our_transport_closes_and_keeps_the_unacknowledged_message(broker: Broker) -> None:
    connection, message = _consume_one_and_lose_the_broker(broker, "workers.broker:Transport")

    _lose_the_connection_as_celery_does(connection)  # no AttributeError
    broker.start()
    # The message (no task of ours: recorded, as a model pull is) is still held as
    # unacknowledged, where kombu's visibility timeout restores it; a late ack (the job
    # finished meanwhile) goes through the same client. An inference job's message has no
    # record (tests/workers/test_broker_records.py).
    assert broker.cli("hlen", "unacked") == "1"
    message.ack()
    assert broker.cli("hlen", "unacked") == "0"


# --- a real worker ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Double]:
    server = start_double()
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


def start_worker(env: dict[str, str], engine: Double, name: str, folder: Path) -> Worker:
    log_path = folder / f"{name}.log"
    command = [sys.executable, "-m", "workers", "run", "--engine-url", engine.url]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, "--slots", "2", "--name", name],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    worker = Worker(name, process, log_path)
    wait_for(lambda: "ready." in worker.log() or process.poll() is not None, timeout=30)
    assert process.poll() is None, worker.log()
    return worker


@pytest.fixture
def env(settings_overrides: dict[str, Any], broker: Broker) -> dict[str, str]:
    settings = {key.upper(): str(value) for key, value in settings_overrides.items()}
    return {
        **os.environ,
        **settings,
        "CELERY_BROKER_URL": broker.url,
        "LEASE_TTL_S": "5",
        "HEARTBEAT_INTERVAL_S": "1",
        "SHUTDOWN_GRACE_S": "1",
        "TOKEN_COALESCE_MS": "0",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def api(
    settings_overrides: dict[str, Any], broker: Broker, committed: Database
) -> tuple[FlaskClient, dict[str, str]]:
    client = create_app({**settings_overrides, "celery_broker_url": broker.url}).test_client()
    user = make_committed_user(committed)
    login = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": TEST_PASSWORD}
    )
    return client, bearer(login.get_json()["access_token"])


def test_a_worker_reconnects_after_its_broker_restarts_with_jobs_in_flight(
    env: dict[str, str],
    broker: Broker,
    engine: Double,
    api: tuple[FlaskClient, dict[str, str]],
    tmp_path: Path,
) -> None:
    client, headers = api
    engine.reset()
    engine.configure(token_delay_s=0.05, default_tokens=60)  # 3 s a job
    worker = start_worker(env, engine, "w-restart@test", tmp_path)
    try:
        jobs = [submit(client, headers, prompt=f"in flight {n}") for n in range(2)]
        for job in jobs:
            wait_status(client, headers, job["id"], {"running"})
        # Held, and not recorded for kombu's visibility timeout (workers/broker.py).
        assert broker.cli("hlen", "unacked") == "0"

        broker.stop()
        time.sleep(3)
        broker.start()

        wait_for(lambda: "Connected to" in worker.log().split("Connection to broker lost")[-1])
        for job in jobs:  # the jobs in flight end, one way or another
            assert finished(client, headers, job["id"], timeout=30)["status"] in {
                "completed",
                "failed",
            }
        after = submit(client, headers, prompt="after the restart")
        assert finished(client, headers, after["id"], timeout=30)["status"] == "completed"
        assert worker.process.poll() is None, worker.log()[-4000:]
        assert "Unrecoverable error" not in worker.log()

        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=20) == 0  # asked to stop: nothing to restart
    finally:
        worker.stop()


def test_a_worker_whose_consumer_fails_exits_non_zero_and_hands_its_job_back(
    env: dict[str, str],
    broker: Broker,
    engine: Double,
    api: tuple[FlaskClient, dict[str, str]],
    tmp_path: Path,
) -> None:
    """A broker that answers the consumer's BRPOP with an error (here NOPERM; a read-only
    replica after a failover or MISCONF answer the same way) is no connection error to
    Celery: "Unrecoverable error". The process must end, non-zero, and promptly: its
    running job gets SHUTDOWN_GRACE_S, as on SIGTERM, then goes back to the queue."""
    client, headers = api
    engine.reset()
    engine.configure(token_delay_s=0.1, default_tokens=400)  # 40 s: longer than the test
    worker = start_worker(env, engine, "w-broken@test", tmp_path)
    try:
        job = submit(client, headers, prompt="outlives its worker")
        wait_status(client, headers, job["id"], {"running"})

        assert broker.cli("acl", "setuser", "default", "-brpop") == "OK"

        code = worker.process.wait(timeout=30)
        log = worker.log()
        assert "Unrecoverable error" in log, log[-4000:]
        assert code != 0, log[-4000:]
        body = read(client, headers, job["id"])
        assert body["status"] == "queued", body  # handed back after the grace
        assert body["attempt"] == 2
    finally:
        worker.stop()
