"""Submit -> queue -> a real worker -> the Ollama double -> stored result and events."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from db.session import Database
from tests.ollama_double.behaviour import tokens_for
from tests.pipeline.conftest import Broker, Double, Worker, both_brokers, wait_for
from tests.pipeline.jobs import events_of, finished, submit

pytestmark = [pytest.mark.usefixtures("beat", "fresh_double"), both_brokers]


@pytest.fixture(scope="module")
def worker(start_worker: Any, double: Double) -> Worker:
    return start_worker(double.url, name="w-main@test", slots=2)


def test_generate_runs_to_completion_with_metrics_and_ordered_events(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, committed: Database
) -> None:
    accepted = submit(api, user_headers, options={"num_predict": 6})

    assert accepted["status"] == "queued"
    assert accepted["links"]["self"] == f"/api/v1/inference/requests/{accepted['id']}"
    result = finished(api, user_headers, accepted["id"])

    expected = "".join(tokens_for("why is the sky blue?", 6))
    assert result["status"] == "completed", result
    assert result["output"] == expected
    assert result["done_reason"] == "length"
    assert result["eval_count"] == 6
    assert result["prompt_eval_count"] == 5
    assert result["total_duration"] > 0
    assert result["eval_duration"] > 0
    assert result["worker"] == "w-main@test"
    assert result["attempt"] == 1
    assert result["started_at"] >= result["queued_at"]
    assert result["completed_at"] >= result["started_at"]

    events = events_of(api, accepted["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [(e["type"], e.get("status")) for e in events]
    assert kinds[0] == ("status", "queued")
    assert kinds[1] == ("status", "running")
    assert kinds[-2:] == [("done", None), ("status", "completed")]
    assert "".join(e["text"] for e in events if e["type"] == "token") == expected


def test_chat_runs_to_completion(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker
) -> None:
    accepted = submit(api, user_headers, kind="chat", model="qwen3:8b")
    result = finished(api, user_headers, accepted["id"])
    assert result["status"] == "completed"
    assert result["output"] == "".join(tokens_for("hello there", 8))
    assert result["output_message"]["role"] == "assistant"
    assert result["done_reason"] == "stop"


def test_a_model_nobody_serves_is_409(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker
) -> None:
    response = api.post(
        "/api/v1/inference/generate",
        headers=user_headers,
        json={"model": "nobody-has:this", "prompt": "hi"},
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "model_unavailable"


def test_idempotency_key_replays_or_conflicts(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker
) -> None:
    headers = {**user_headers, "Idempotency-Key": "order-42"}
    body = {"model": "llama3.2", "prompt": "once only"}
    first = api.post("/api/v1/inference/generate", json=body, headers=headers)
    again = api.post("/api/v1/inference/generate", json=body, headers=headers)
    other = api.post(
        "/api/v1/inference/generate", json={**body, "prompt": "twice"}, headers=headers
    )

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_conflict"


def test_a_model_that_appears_on_the_engine_is_served_without_a_restart(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double, broker: Broker
) -> None:
    newcomer = f"newcomer-{broker.kind}:7b"  # new to the fleet on each broker's run
    refused = api.post(
        "/api/v1/inference/generate",
        headers=user_headers,
        json={"model": newcomer, "prompt": "hello"},
    )
    assert refused.status_code == 409

    double.configure(models=["llama3.2:latest", "qwen3:8b", newcomer])

    def accepted() -> dict[str, Any] | None:
        response = api.post(
            "/api/v1/inference/generate",
            headers=user_headers,
            json={"model": newcomer, "prompt": "hello"},
        )
        return response.get_json() if response.status_code == 202 else None

    job = wait_for(accepted, timeout=15, interval=0.5)  # the next heartbeat registers it
    result = finished(api, user_headers, job["id"])
    assert result["status"] == "completed"
    assert result["worker"] == "w-main@test"
