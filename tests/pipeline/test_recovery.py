"""Priorities with one slot, a worker killed mid-stream, a broker that goes away."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from db.models import InferenceRequest
from db.session import Database
from tests.conftest import make_committed_user
from tests.factories import TEST_PASSWORD
from tests.ollama_double.behaviour import tokens_for
from tests.pipeline.conftest import Double, both_brokers, start_beat, wait_for
from tests.pipeline.jobs import events_of, finished, read, submit, tokens_seen, wait_status
from tests.support.identity import bearer
from tests.support.rabbitmq import ThrowawayRabbitMQ, unavailable_reason
from tests.support.throwaway import Throwaway, ThrowawayRedis
from web import create_app
from workers.dispatch import publish_inference

pytestmark = pytest.mark.usefixtures("fresh_double")


@both_brokers
def test_higher_priority_jobs_start_first_when_one_slot_frees(
    api: FlaskClient,
    user_headers: dict[str, str],
    start_worker: Any,
    double: Double,
    committed: Database,
    beat: None,
) -> None:
    worker = start_worker(double.url, name="w-prio@test", slots=1)
    try:
        double.configure(token_delay_s=0.05, default_tokens=30)
        blocker = submit(api, user_headers, prompt="blocker")
        wait_status(api, user_headers, blocker["id"], {"running"})
        low = [submit(api, user_headers, prompt=f"low {n}", priority=1) for n in range(2)]
        high = [submit(api, user_headers, prompt=f"high {n}", priority=9) for n in range(2)]
        for job in low + high:
            finished(api, user_headers, job["id"], timeout=40)

        with committed.unit_of_work() as session:
            rows = session.execute(
                select(InferenceRequest.input["prompt"].astext, InferenceRequest.started_at)
            )
            started = {prompt: at for prompt, at in rows}
        assert max(started["high 0"], started["high 1"]) < min(started["low 0"], started["low 1"])
    finally:
        worker.stop()


@both_brokers
def test_a_killed_worker_hands_its_job_to_another_without_duplicated_text(
    api: FlaskClient,
    user_headers: dict[str, str],
    start_worker: Any,
    double: Double,
    beat: None,
) -> None:
    first = start_worker(double.url, name="w-first@test", slots=1)
    second = start_worker(double.url, name="w-second@test", slots=1)
    try:
        double.configure(token_delay_s=0.1, default_tokens=30)
        job = submit(api, user_headers, prompt="survives a crash")
        running = wait_status(api, user_headers, job["id"], {"running"})
        wait_for(lambda: len(tokens_seen(api, job["id"])) > 5, timeout=10)
        victim = first if running["worker"] == first.name else second
        survivor = second if victim is first else first

        victim.kill()  # SIGKILL mid-stream: no ack, no result, no goodbye

        result = finished(api, user_headers, job["id"], timeout=45)
        assert result["status"] == "completed"
        assert result["attempt"] == 2
        assert result["worker"] == survivor.name
        assert result["output"] == "".join(tokens_for("survives a crash", 30))
        events = events_of(api, job["id"])
        restart = max(i for i, e in enumerate(events) if e.get("status") == "restarted")
        # A reader that starts over at the last restart sees the output exactly once.
        after = [e for e in events[restart:] if e["type"] == "token"]
        assert "".join(e["text"] for e in after) == result["output"]
        assert {e["attempt"] for e in after} == {2}
    finally:
        first.stop()
        second.stop()


# --- the broker goes away -------------------------------------------------------------


@pytest.fixture
def own_broker(request: pytest.FixtureRequest) -> Iterator[Throwaway]:
    """A broker of its own (Redis, or RabbitMQ with `amqp`), so it can stop while the rest
    of Redis stays."""
    if request.param == "amqp":
        reason = unavailable_reason()
        if reason is not None:
            pytest.skip(f"RabbitMQ: {reason}")
        with ThrowawayRabbitMQ() as rabbit:
            yield rabbit
    else:
        with ThrowawayRedis(persist=False) as redis:
            yield redis


@pytest.mark.parametrize("own_broker", ["redis", "amqp"], indirect=True)
def test_jobs_accepted_while_the_broker_is_down_run_when_it_returns(
    own_broker: Throwaway,
    settings_overrides: dict[str, Any],
    pipeline_env: dict[str, str],
    start_worker: Any,
    double: Double,
    committed: Database,
    tmp_path: Any,
) -> None:
    broker_url = own_broker.url
    env = {"CELERY_BROKER_URL": broker_url}
    worker = start_worker(double.url, name="w-broker@test", slots=1, env=env)
    beat = start_beat({**pipeline_env, **env}, tmp_path)
    app: Flask = create_app({**settings_overrides, "celery_broker_url": broker_url})
    client = app.test_client()

    user = make_committed_user(committed)
    token = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": TEST_PASSWORD}
    ).get_json()
    headers = bearer(token["access_token"])
    try:
        own_broker.stop()

        celery = app.extensions["celery"]
        assert publish_inference(celery, uuid.uuid4(), "llama3.2:latest", 5) is False
        accepted = submit(client, headers, prompt="waits for the broker")
        assert accepted["status"] == "queued"
        with committed.unit_of_work() as session:
            row = session.get(InferenceRequest, accepted["id"])
            assert row is not None
            assert row.dispatched_at is None  # accepted and stored, not yet handed over

        own_broker.start()
        result = finished(client, headers, accepted["id"], timeout=60)
        assert result["status"] == "completed"
        assert result["output"] == "".join(tokens_for("waits for the broker", 8))
        assert read(client, headers, accepted["id"])["attempt"] == 1
    finally:
        beat.terminate()
        beat.wait(timeout=10)
        worker.stop()
