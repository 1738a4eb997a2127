"""Graceful shutdown: a worker told to stop finishes its jobs or hands them back (never left
running), and the web process closes its WebSockets with 1001 when it is told to stop."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from db.models import User
from db.session import Database
from tests.conftest import make_committed_user, start_live_server, stop_live_server
from tests.pipeline.conftest import Double, Worker, both_brokers, wait_for
from tests.pipeline.jobs import events_of, finished, read, submit
from tests.support.identity import auth_headers
from tests.support.ws import connect, read_until_closed, token_of

pytestmark = pytest.mark.usefixtures("fresh_double")


def _running(api: FlaskClient, headers: dict[str, str], ids: list[str]) -> bool:
    return all(read(api, headers, i)["status"] == "running" for i in ids)


@both_brokers
def test_a_stopped_worker_finishes_what_fits_in_the_grace_period(
    api: FlaskClient,
    user_headers: dict[str, str],
    double: Double,
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(double.url, name="short@test", slots=1, env={"SHUTDOWN_GRACE_S": "10"})
    double.configure(token_delay_s=0.05)
    job = submit(api, user_headers, options={"num_predict": 40})  # about 2 s
    wait_for(lambda: _running(api, user_headers, [job["id"]]))
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=20)
    done = read(api, user_headers, job["id"])
    assert done["status"] == "completed"
    assert done["attempt"] == 1
    assert done["eval_count"] == 40


@both_brokers
def test_a_stopped_worker_hands_back_what_does_not_fit_and_another_runs_it(
    api: FlaskClient,
    user_headers: dict[str, str],
    double: Double,
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(double.url, name="leaving@test", slots=2, env={"SHUTDOWN_GRACE_S": "1"})
    double.configure(token_delay_s=0.1)
    jobs = [submit(api, user_headers, options={"num_predict": 100}) for _ in range(2)]  # 10 s
    ids = [job["id"] for job in jobs]
    wait_for(lambda: _running(api, user_headers, ids))
    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=20)
    assert time.monotonic() - stopped_at < 8  # the grace, a chunk, the hand-back: not 10 s
    for request_id in ids:  # back in the queue at once, not after a lease expiry
        assert read(api, user_headers, request_id)["status"] == "queued"
    double.configure(token_delay_s=0.0)
    start_worker(double.url, name="staying@test", slots=2)
    for request_id in ids:
        done = finished(api, user_headers, request_id, timeout=30)
        assert done["status"] == "completed"
        assert done["attempt"] == 2
        assert done["eval_count"] == 100
        restarts = [e for e in events_of(api, request_id) if e.get("status") == "restarted"]
        # The hand-back's, then the next attempt's own (for readers who missed the first).
        assert [e["reason"] for e in restarts] == ["worker_stopping", "attempt_started"]
        assert [e["attempt"] for e in restarts] == [2, 2]


@both_brokers
def test_a_stopped_worker_puts_back_the_jobs_it_held_without_running_them(
    api: FlaskClient,
    committed: Database,
    double: Double,
    start_worker: Callable[..., Worker],
) -> None:
    """A job held back by its owner's running quota waits inside the worker, as a message
    offered again later (a countdown retry). A stopping worker must give that message back
    to the broker: lost, the job would wait for the outbox sweeper's LOST_DISPATCH_S (300 s
    here, as by default)."""
    owner = make_committed_user(committed)
    with committed.unit_of_work() as session:
        session.get(User, owner.id).quotas = {"max_running_jobs": 1}  # type: ignore[union-attr]
    headers = auth_headers(api, owner)
    worker = start_worker(
        double.url,
        name="holding@test",
        slots=2,
        env={"SHUTDOWN_GRACE_S": "1", "QUOTA_WAIT_RETRY_S": "3"},
    )
    double.configure(token_delay_s=0.1)
    running = submit(api, headers, options={"num_predict": 100})["id"]  # about 10 s
    wait_for(lambda: _running(api, headers, [running]))
    held = submit(api, headers, options={"num_predict": 5})["id"]
    # Within milliseconds the worker takes its message, finds the owner at their cap and
    # publishes it again with a 3 s countdown; it takes that one back at once (it has a free
    # slot) and holds it until the countdown ends: mid-countdown, the message is in the worker.
    time.sleep(1.5)
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=20)
    assert read(api, headers, held)["status"] == "queued"
    double.configure(token_delay_s=0.0)
    start_worker(double.url, name="after-holding@test", slots=2)
    for request_id in (running, held):
        assert finished(api, headers, request_id, timeout=30)["status"] == "completed"


def test_the_web_process_closes_websockets_with_going_away(
    user_headers: dict[str, str],
    settings_overrides: dict[str, Any],
    tmp_path: Path,
) -> None:
    server = start_live_server(settings_overrides, tmp_path, WEB_CONCURRENCY="2")
    try:
        # Topic sockets stay open until the client or the server ends them.
        sockets = [connect(server.url, "/ws", token_of(user_headers)) for _ in range(4)]
        time.sleep(0.5)  # all four admitted and waiting
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        closes = [read_until_closed(ws) for ws in sockets]
        assert [c.close_code for c in closes] == [1001] * 4
        assert time.monotonic() - stopped_at < 10
        server.process.wait(timeout=35)
    finally:
        stop_live_server(server)
