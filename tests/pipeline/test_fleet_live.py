"""The fleet surface against a real worker and the Ollama double: discovery, pull with
progress, replica removal, drain, slots and decommission."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

from tests.pipeline.conftest import Double, Worker, start_double, wait_for
from tests.pipeline.jobs import finished, read, submit, wait_status
from workers.dispatch import MODEL_PULL, publish_to_node


@pytest.fixture(scope="module")
def fleet_double() -> Iterator[Double]:
    double = start_double(("llama3.2:latest",))
    yield double
    double.process.terminate()
    double.process.wait(timeout=10)


@pytest.fixture(scope="module")
def node(fleet_double: Double, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(fleet_double.url, name="fleet-w1", slots=2)


@pytest.fixture(autouse=True)
def reset_double(fleet_double: Double) -> None:
    fleet_double.configure(models=["llama3.2:latest"], token_delay_s=0.0, first_token_delay_s=0)


def _node_id(api: FlaskClient, headers: dict[str, str], name: str) -> str:
    nodes = api.get("/api/v1/nodes/?per_page=100", headers=headers).get_json()["items"]
    return next(n["id"] for n in nodes if n["name"] == name)


def _model_id(api: FlaskClient, headers: dict[str, str], name: str) -> str | None:
    models = api.get("/api/v1/models/?per_page=100", headers=headers).get_json()["items"]
    return next((m["id"] for m in models if m["name"] == name), None)


def _events(redis: Redis, topic: str) -> Any:
    """The topic's news as published. Redis pub/sub channels are shared by every logical
    database of the server: the in-process lane (tests/lanes.py), on a database of its own,
    publishes model news of its own here too. Match events by their model, not only by type."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"omx:topic:{topic}")
    return pubsub


def _collect(pubsub: Any, until: Callable[[dict[str, Any]], bool], timeout: float = 20) -> list:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message is None:
            continue
        seen.append(json.loads(message["data"]))
        if until(seen[-1]):
            return seen
    raise AssertionError(f"no matching event; saw {seen[-5:]}")


def ended(model: str) -> Callable[[dict[str, Any]], bool]:
    """The end of a pull of `model`, as its worker announces it."""
    return lambda e: e["type"] in ("pulled", "pull_failed") and e.get("model") == model


def test_models_on_a_workers_engine_appear_by_themselves(
    api: FlaskClient, operator_headers: dict[str, str], node: Worker
) -> None:
    model_id = wait_for(lambda: _model_id(api, operator_headers, "llama3.2:latest"))
    model = api.get(f"/api/v1/models/{model_id}", headers=operator_headers).get_json()
    assert (model["discovered"], model["status"]) == (True, "available")
    replicas = api.get(f"/api/v1/models/{model_id}/replicas", headers=operator_headers)
    assert "fleet-w1" in [r["node_name"] for r in replicas.get_json()["items"]]


def test_a_pull_streams_progress_and_the_replica_becomes_available(
    api: FlaskClient,
    operator_headers: dict[str, str],
    user_headers: dict[str, str],
    node: Worker,
    redis_client: Redis,
    fleet_double: Double,
) -> None:
    fleet_double.configure(token_delay_s=0.05)  # the double's pull steps take this long each
    created = api.post("/api/v1/models/", json={"name": "phi4-mini"}, headers=operator_headers)
    model_id = created.get_json()["id"]
    news = _events(redis_client, "model_update")
    node_id = _node_id(api, operator_headers, "fleet-w1")
    pulled = api.post(
        f"/api/v1/models/{model_id}/pull", json={"node_id": node_id}, headers=operator_headers
    )
    assert pulled.status_code == 202

    seen = [
        e for e in _collect(news, ended("phi4-mini:latest")) if e.get("model") == "phi4-mini:latest"
    ]
    assert seen[-1]["type"] == "pulled"
    progress = [e for e in seen if e["type"] == "pull_progress" and e.get("total")]
    assert progress
    assert progress[-1]["completed"] == progress[-1]["total"]
    assert progress[-1]["digest"].startswith("sha256:")
    replicas = api.get(f"/api/v1/models/{model_id}/replicas", headers=operator_headers)
    [replica] = replicas.get_json()["items"]
    assert (replica["node_name"], replica["status"]) == ("fleet-w1", "available")
    assert api.get(f"/api/v1/models/{model_id}", headers=operator_headers).get_json()["status"] == (
        "available"
    )

    # The worker follows the new model's queue at its next heartbeat: a job on it runs.
    fleet_double.configure(token_delay_s=0.0)
    job = submit(api, user_headers, model="phi4-mini")
    assert finished(api, user_headers, job["id"])["status"] == "completed"

    removal = api.delete(f"/api/v1/models/{model_id}/replicas/{node_id}", headers=operator_headers)
    assert removal.status_code == 202
    _collect(news, lambda e: e["type"] == "removed" and e["model"] == "phi4-mini:latest")
    assert (
        api.get(f"/api/v1/models/{model_id}/replicas", headers=operator_headers).get_json()["items"]
        == []
    )
    assert api.get(f"/api/v1/models/{model_id}", headers=operator_headers).get_json()["status"] == (
        "unavailable"
    )
    news.close()


def test_a_worker_refuses_a_pull_from_a_registry_not_allowed(
    api: FlaskClient, operator_headers: dict[str, str], node: Worker, redis_client: Redis
) -> None:
    """The web refuses such pulls; a message that reaches the worker anyway (published by
    something else that can write to the broker) is refused there too, before the engine
    hears of it."""
    news = _events(redis_client, "model_update")
    node_id = _node_id(api, operator_headers, "fleet-w1")
    celery = api.application.extensions["celery"]
    model = "evil.example/ns/model"
    assert publish_to_node(celery, MODEL_PULL, [model, node_id], "fleet-w1")
    seen = _collect(
        news, lambda e: e["type"] in ("pull_failed", "pull_started") and e.get("model") == model
    )
    assert seen[-1]["type"] == "pull_failed"
    assert "evil.example" in seen[-1]["error"]
    assert "refusing to pull evil.example/ns/model" in node.log()
    news.close()


def test_a_drained_node_finishes_its_job_and_takes_no_new_one(
    api: FlaskClient,
    admin_headers: dict[str, str],
    operator_headers: dict[str, str],
    user_headers: dict[str, str],
    node: Worker,
    fleet_double: Double,
) -> None:
    # Jobs for a model no undrained node serves are accepted and wait, instead of a 409.
    accept = {"queue_while_unavailable": True}
    assert api.put("/api/v1/system/config", json=accept, headers=admin_headers).status_code == 200
    try:
        _drain_and_watch(api, operator_headers, user_headers, fleet_double)
    finally:
        reset = {"queue_while_unavailable": None}
        api.put("/api/v1/system/config", json=reset, headers=admin_headers)


def _drain_and_watch(
    api: FlaskClient,
    operator_headers: dict[str, str],
    user_headers: dict[str, str],
    fleet_double: Double,
) -> None:
    node_id = _node_id(api, operator_headers, "fleet-w1")
    fleet_double.configure(first_token_delay_s=2.0)
    running = submit(api, user_headers)
    wait_status(api, user_headers, running["id"], {"running"})
    api.put(f"/api/v1/nodes/{node_id}", json={"drained": True}, headers=operator_headers)
    time.sleep(2.5)  # HEARTBEAT_INTERVAL_S=1: the worker has seen the order
    waiting = submit(api, user_headers)
    assert finished(api, user_headers, running["id"])["status"] == "completed"
    time.sleep(2)
    assert read(api, user_headers, waiting["id"])["status"] == "queued"  # nobody took it

    api.put(f"/api/v1/nodes/{node_id}", json={"drained": False}, headers=operator_headers)
    fleet_double.configure(first_token_delay_s=0)
    assert finished(api, user_headers, waiting["id"])["status"] == "completed"


def test_slots_limit_the_jobs_a_node_runs_at_once(
    api: FlaskClient,
    operator_headers: dict[str, str],
    user_headers: dict[str, str],
    node: Worker,
    fleet_double: Double,
) -> None:
    node_id = _node_id(api, operator_headers, "fleet-w1")
    api.put(f"/api/v1/nodes/{node_id}", json={"slots": 1}, headers=operator_headers)
    wait_for(lambda: "now takes 1 job(s) at a time" in node.log(), timeout=10)
    fleet_double.configure(first_token_delay_s=1.0)
    jobs = [submit(api, user_headers) for _ in range(2)]
    most_at_once = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        statuses = [read(api, user_headers, job["id"])["status"] for job in jobs]
        most_at_once = max(most_at_once, statuses.count("running"))
        if all(status == "completed" for status in statuses):
            break
        time.sleep(0.05)
    assert statuses == ["completed", "completed"]
    assert most_at_once == 1
    api.put(f"/api/v1/nodes/{node_id}", json={"slots": 2}, headers=operator_headers)
    wait_for(lambda: "now takes 2 job(s) at a time" in node.log(), timeout=10)


def test_decommissioning_a_node_stops_its_worker(
    api: FlaskClient,
    operator_headers: dict[str, str],
    fleet_double: Double,
    start_worker: Callable[..., Worker],
) -> None:
    doomed = start_worker(fleet_double.url, name="fleet-doomed", slots=1)
    node_id = wait_for(lambda: _node_id(api, operator_headers, "fleet-doomed"))
    assert api.delete(f"/api/v1/nodes/{node_id}", headers=operator_headers).status_code == 204
    wait_for(lambda: doomed.process.poll() is not None, timeout=20)
    assert "decommissioned" in doomed.log()
