"""What only RabbitMQ does: a delivery held past the server's consumer_timeout, a publisher's
connection lost with a broker restart. The pipeline's own tests run on RabbitMQ too
(`both_brokers` in test_pipeline.py, test_recovery.py, test_cancel_and_faults.py,
test_shutdown.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import amqp
import pytest

from db.models import InferenceRequest
from db.session import Database
from tests.conftest import make_committed_user
from tests.factories import TEST_PASSWORD
from tests.ollama_double.behaviour import tokens_for
from tests.pipeline.conftest import Double, start_beat, wait_for
from tests.pipeline.jobs import events_of, finished, submit, wait_status
from tests.support.identity import bearer
from tests.support.rabbitmq import ThrowawayRabbitMQ, unavailable_reason
from web import create_app

pytestmark = pytest.mark.usefixtures("fresh_double")

# RabbitMQ closes the channel of a delivery unacknowledged this long (ms); its channels
# look every tick (ms), so the limit bites within a test.
CONSUMER_TIMEOUT_MS, CHANNEL_TICK_MS = 2000, 200


@pytest.fixture(scope="module")
def strict_rabbit() -> Iterator[ThrowawayRabbitMQ]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"RabbitMQ: {reason}")
    settings = {"consumer_timeout": CONSUMER_TIMEOUT_MS, "channel_tick_interval": CHANNEL_TICK_MS}
    with ThrowawayRabbitMQ(settings) as rabbit:
        yield rabbit


def _client(
    settings_overrides: dict[str, Any], broker_url: str, committed: Database, **overrides: Any
) -> Any:
    settings = {**settings_overrides, "celery_broker_url": broker_url, **overrides}
    client = create_app(settings).test_client()
    user = make_committed_user(committed)
    login = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": TEST_PASSWORD}
    ).get_json()
    return client, bearer(login["access_token"])


def test_a_job_longer_than_the_consumer_timeout_runs_once_and_the_worker_stays(
    strict_rabbit: ThrowawayRabbitMQ,
    settings_overrides: dict[str, Any],
    pipeline_env: dict[str, str],
    start_worker: Any,
    double: Double,
    committed: Database,
    tmp_path: Any,
) -> None:
    env = {"CELERY_BROKER_URL": strict_rabbit.url}
    worker = start_worker(double.url, name="w-long@test", slots=1, env=env)
    beat = start_beat({**pipeline_env, **env}, tmp_path)
    client, headers = _client(settings_overrides, strict_rabbit.url, committed)
    try:
        double.configure(token_delay_s=0.1, default_tokens=50)  # about 5 s: 2.5 timeouts
        long = submit(client, headers, prompt="longer than the broker allows")
        wait_status(client, headers, long["id"], {"running"})
        result = finished(client, headers, long["id"], timeout=60)

        assert result["status"] == "completed"
        assert result["attempt"] == 1
        assert result["output"] == "".join(tokens_for("longer than the broker allows", 50))
        statuses = [e.get("status") for e in events_of(client, long["id"]) if e["type"] == "status"]
        assert statuses == ["queued", "running", "completed"]  # never restarted, never twice
        stats = double.stats()
        assert stats["completed"].count("longer than the broker allows") == 1

        # RabbitMQ closed the channel and gave the job again; the claim refused it, and said
        # why in words an operator can act on.
        assert "PRECONDITION_FAILED - delivery acknowledgement" in worker.log()
        # The redelivery waits for the only slot, so it may be taken after the job ends.
        wait_for(lambda: "consumer_timeout is shorter than the job" in worker.log(), timeout=30)
        # The worker is the same process (its consumer reconnected), and takes the next job.
        assert worker.process.poll() is None
        double.configure(token_delay_s=0.0, default_tokens=8)
        short = submit(client, headers, prompt="after the long one")
        assert finished(client, headers, short["id"])["status"] == "completed"
        assert worker.process.poll() is None
    finally:
        beat.terminate()
        beat.wait(timeout=10)
        worker.stop()


def test_the_first_publish_after_a_broker_restart_goes_out_at_once(
    settings_overrides: dict[str, Any],
    committed: Database,
) -> None:
    """The web's pooled connection dies with the broker; the next publish must reconnect and
    go out, not leave the job to the outbox sweeper (redis-py reconnects by itself, kombu's
    AMQP connection does not). Durable queues and persistent messages keep the first job."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"RabbitMQ: {reason}")
    with ThrowawayRabbitMQ() as rabbit:
        # No worker here: the jobs are accepted and wait in the broker.
        client, headers = _client(
            settings_overrides, rabbit.url, committed, queue_while_unavailable=True
        )
        first = submit(client, headers, prompt="before the restart")
        rabbit.stop()
        rabbit.start()
        second = submit(client, headers, prompt="after the restart")

        connection = amqp.Connection(f"127.0.0.1:{rabbit.port}")
        connection.connect()
        try:
            queue = connection.channel().queue_declare("model.llama3.2:latest", passive=True)
        finally:
            connection.close()
        assert queue.message_count == 2
        with committed.unit_of_work() as session:
            for job in (first, second):
                row = session.get(InferenceRequest, job["id"])
                assert row is not None
                assert row.dispatched_at is not None  # published at once, not swept later
