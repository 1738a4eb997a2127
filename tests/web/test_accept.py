"""Accepting a job (web/inference/service.py): the row as submitted, the Idempotency-Key's
promise (the same key and request: the same job; the same key and another request: 409),
why a job is refused, and what happens once it is committed (announce, publish, or leave it
to the outbox sweeper). Also the cancel that follows."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import InferenceRequest, Model, ModelStatus, Role
from tests.factories import InferenceRequestFactory, ModelReplicaFactory
from tests.support.identity import auth_headers, error_code, make_user
from web.inference import service
from workers.metrics import INFERENCE_REQUESTS
from workers.watch import cancel_key

GENERATE = "/api/v1/inference/generate"
CHAT = "/api/v1/inference/chat"
REQUESTS = "/api/v1/inference/requests"


@pytest.fixture
def served() -> Model:
    """accept-llama:latest, held by an online node with a fresh heartbeat."""
    replica = ModelReplicaFactory(
        model__name="accept-llama:latest",
        model__status=ModelStatus.AVAILABLE,
        node__last_heartbeat_at=utcnow(),
    )
    model: Model = replica.model
    return model


@pytest.fixture
def headers(client: FlaskClient) -> dict[str, str]:
    return auth_headers(client, make_user())


def _job(db_session: Session, response: Any) -> InferenceRequest:
    db_session.expire_all()
    row = db_session.get(InferenceRequest, uuid.UUID(response.get_json()["id"]))
    assert row is not None
    return row


def _queued(label: str) -> float:
    return float(INFERENCE_REQUESTS.labels("queued", label)._value.get())


def test_a_job_is_stored_as_submitted(
    client: FlaskClient, db_session: Session, served: Model, app: Flask
) -> None:
    user = make_user()
    body = {
        "model": "accept-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 0.1},
        "priority": 0,
        "format": "json",
    }
    before = _queued("accept-llama:latest")

    response = client.post(
        CHAT, json=body, headers={**auth_headers(client, user), "Idempotency-Key": "k1"}
    )

    assert response.status_code == 202
    answer = response.get_json()
    assert answer["status"] == "queued"
    assert answer["links"]["ws"] == f"/ws/inference/{answer['id']}"
    row = _job(db_session, response)
    assert (row.user_id, row.model_name, row.model_id) == (
        user.id,
        "accept-llama:latest",
        served.id,
    )
    assert (row.kind, row.source, row.status, row.attempt) == ("chat", "api", "queued", 1)
    assert row.input == {"messages": [{"role": "user", "content": "hi"}], "format": "json"}
    assert (row.options, row.priority, row.idempotency_key) == ({"temperature": 0.1}, 0, "k1")
    assert row.dispatched_at is not None  # published
    [queued] = app.extensions["events"].replay(row.id)
    assert (queued["type"], queued["status"], queued["attempt"]) == ("status", "queued", 1)
    assert queued["user_id"] == str(user.id)
    assert _queued("accept-llama:latest") == before + 1


def test_the_request_hash_is_stable_across_releases(
    client: FlaskClient, db_session: Session, served: Model, headers: dict[str, str]
) -> None:
    """Stored hashes are compared with new ones: a change of what is hashed, or how, turns
    a client's retry across a deploy into a 409."""
    body = {"model": "accept-llama", "prompt": "Why is the sky blue?", "options": {"seed": 1}}
    response = client.post(GENERATE, json=body, headers=headers)
    described = {
        "kind": "generate",
        "model": "accept-llama:latest",
        "priority": None,
        "options": {"seed": 1},
        "prompt": "Why is the sky blue?",
    }
    expected = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    assert _job(db_session, response).request_hash == expected
    assert expected == "96882cd2310fde27a29d84e6cd60c4e10aa1e51cf9217ef6133baa59544747d7"


@pytest.mark.parametrize("key", ["a", "!", "~", "K" * 255, "order-42/retry:1"])
def test_an_idempotency_key_is_visible_ascii(
    client: FlaskClient, db_session: Session, served: Model, headers: dict[str, str], key: str
) -> None:
    body = {"model": "accept-llama", "prompt": "p"}
    response = client.post(GENERATE, json=body, headers={**headers, "Idempotency-Key": key})
    assert response.status_code == 202
    assert _job(db_session, response).idempotency_key == key


@pytest.mark.parametrize("key", ["", "K" * 256, "with space", "tab\there", "caf\u00e9", "a\x7f"])
def test_any_other_idempotency_key_is_400(
    client: FlaskClient, db_session: Session, served: Model, headers: dict[str, str], key: str
) -> None:
    body = {"model": "accept-llama", "prompt": "p"}
    response = client.post(GENERATE, json=body, headers={**headers, "Idempotency-Key": key})
    assert response.status_code == 400
    assert error_code(response) == "invalid_idempotency_key"
    message = response.get_json()["error"]["message"]
    assert message == "Idempotency-Key must be 1-255 visible ASCII characters."
    assert db_session.query(InferenceRequest).count() == 0


def test_a_missing_priority_is_the_systems_default(
    app_factory: Callable[..., Flask], db_session: Session, served: Model
) -> None:
    client = app_factory(default_priority=2).test_client()
    response = client.post(
        GENERATE,
        json={"model": "accept-llama", "prompt": "x"},
        headers=auth_headers(client, make_user()),
    )
    row = _job(db_session, response)
    assert (row.priority, row.options) == (2, {})


@pytest.mark.parametrize("path", [GENERATE, CHAT])
def test_the_same_key_and_request_is_the_same_job(
    client: FlaskClient,
    db_session: Session,
    served: Model,
    headers: dict[str, str],
    path: str,
) -> None:
    body: dict[str, Any] = {"model": "accept-llama", "options": {"seed": 7}, "priority": 3}
    body |= (
        {"prompt": "p"} if path == GENERATE else {"messages": [{"role": "user", "content": "p"}]}
    )
    keyed = {**headers, "Idempotency-Key": "retry-1"}

    first = client.post(path, json=body, headers=keyed)
    row = _job(db_session, first)
    db_session.execute(
        update(InferenceRequest).where(InferenceRequest.id == row.id).values(status="running")
    )
    again = client.post(path, json={**body, "model": "accept-llama:latest"}, headers=keyed)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == str(row.id)
    assert again.get_json()["status"] == "running"  # the job as it is now
    assert db_session.query(InferenceRequest).filter_by(user_id=row.user_id).count() == 1


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "another prompt"},
        {"priority": 4},
        {"options": {"seed": 8}},
        {"options": None},
        {"system": "be brief"},
        {"model": "accept-llama:1b"},
    ],
)
def test_the_same_key_with_another_request_is_a_conflict(
    client: FlaskClient,
    db_session: Session,
    served: Model,
    headers: dict[str, str],
    change: dict[str, Any],
) -> None:
    ModelReplicaFactory(
        model__name="accept-llama:1b",
        model__status=ModelStatus.AVAILABLE,
        node__last_heartbeat_at=utcnow(),
    )
    body = {"model": "accept-llama", "prompt": "p", "options": {"seed": 7}, "priority": 3}
    keyed = {**headers, "Idempotency-Key": "retry-2"}
    first = client.post(GENERATE, json=body, headers=keyed)
    assert first.status_code == 202

    other = client.post(GENERATE, json={**body, **change}, headers=keyed)

    assert other.status_code == 409
    assert error_code(other) == "idempotency_conflict"
    message = other.get_json()["error"]["message"]
    assert message == "This Idempotency-Key was used with a different request."
    assert db_session.query(InferenceRequest).filter_by(idempotency_key="retry-2").count() == 1


def test_a_generate_and_a_chat_are_different_requests(
    client: FlaskClient, served: Model, headers: dict[str, str]
) -> None:
    keyed = {**headers, "Idempotency-Key": "retry-3"}
    assert client.post(GENERATE, json={"model": "accept-llama", "prompt": "p"}, headers=keyed)
    chat = {"model": "accept-llama", "messages": [{"role": "user", "content": "p"}]}
    assert error_code(client.post(CHAT, json=chat, headers=keyed)) == "idempotency_conflict"


def test_keys_are_per_user(
    client: FlaskClient, db_session: Session, served: Model, headers: dict[str, str]
) -> None:
    body = {"model": "accept-llama", "prompt": "p"}
    mine = client.post(GENERATE, json=body, headers={**headers, "Idempotency-Key": "shared"})
    theirs_headers = {**auth_headers(client, make_user()), "Idempotency-Key": "shared"}
    theirs = client.post(GENERATE, json={**body, "prompt": "q"}, headers=theirs_headers)
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.get_json()["id"] != theirs.get_json()["id"]


def test_a_replay_is_answered_even_once_the_model_is_refused(
    client: FlaskClient, db_session: Session, served: Model, headers: dict[str, str]
) -> None:
    """The key is looked up before the model's state: a retry gets its job, not a 409."""
    body = {"model": "accept-llama", "prompt": "p"}
    keyed = {**headers, "Idempotency-Key": "before-disable"}
    first = client.post(GENERATE, json=body, headers=keyed)
    db_session.execute(update(Model).values(status=ModelStatus.DISABLED))
    again = client.post(GENERATE, json=body, headers=keyed)
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    other = client.post(GENERATE, json={**body, "prompt": "q"}, headers=keyed)
    assert error_code(other) == "idempotency_conflict"
    unkeyed = client.post(GENERATE, json=body, headers=headers)
    assert error_code(unkeyed) == "model_disabled"


def test_a_disabled_model_refuses_with_its_own_code(
    client: FlaskClient, db_session: Session, served: Model, headers: dict[str, str]
) -> None:
    db_session.execute(update(Model).values(status=ModelStatus.DISABLED))
    keyed = {**headers, "Idempotency-Key": "new-key"}
    response = client.post(GENERATE, json={"model": "accept-llama", "prompt": "p"}, headers=keyed)
    assert response.status_code == 409
    assert error_code(response) == "model_disabled"
    assert response.get_json()["error"]["message"] == "Model accept-llama:latest is disabled."


@pytest.mark.parametrize("model", ["nowhere:latest", "accept-llama"])
def test_a_model_nobody_serves_refuses_with_its_name(
    client: FlaskClient, db_session: Session, headers: dict[str, str], model: str
) -> None:
    ModelReplicaFactory(model__name="accept-llama:latest", node__status="offline")
    keyed = {**headers, "Idempotency-Key": "unserved"}
    response = client.post(GENERATE, json={"model": model, "prompt": "p"}, headers=keyed)
    name = model if ":" in model else f"{model}:latest"
    assert response.status_code == 409
    assert error_code(response) == "model_unavailable"
    assert response.get_json()["error"]["details"] == {"model": name}
    assert response.get_json()["error"]["message"] == f"No online node serves {name}."
    assert db_session.query(InferenceRequest).count() == 0


def test_an_unregistered_model_queues_only_when_allowed_and_adds_no_series(
    app_factory: Callable[..., Flask], db_session: Session
) -> None:
    client = app_factory(queue_while_unavailable=True).test_client()
    before, typo = _queued("<unregistered>"), _queued("typo:latest")
    response = client.post(
        GENERATE,
        json={"model": "typo", "prompt": "p"},
        headers=auth_headers(client, make_user()),
    )
    assert response.status_code == 202
    row = _job(db_session, response)
    assert (row.model_name, row.model_id) == ("typo:latest", None)
    assert _queued("<unregistered>") == before + 1
    assert _queued("typo:latest") == typo  # no series of its own


def test_a_failed_publish_leaves_the_job_to_the_outbox_sweeper(
    client: FlaskClient,
    db_session: Session,
    served: Model,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published: list[tuple[Any, ...]] = []

    def broker_down(*args: Any) -> bool:
        published.append(args[1:])
        return False

    monkeypatch.setattr(service, "publish_inference", broker_down)
    body = {"model": "accept-llama", "prompt": "p", "priority": 6}
    response = client.post(GENERATE, json=body, headers=headers)
    assert response.status_code == 202
    row = _job(db_session, response)
    assert published == [(row.id, "accept-llama:latest", 6)]
    assert row.dispatched_at is None
    assert row.status == "queued"


def test_a_failed_announcement_does_not_fail_the_answer(
    client: FlaskClient,
    db_session: Session,
    served: Model,
    headers: dict[str, str],
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def redis_down(*args: Any, **kwargs: Any) -> int:
        raise RedisConnectionError("down")

    monkeypatch.setattr(app.extensions["events"], "publish", redis_down)
    response = client.post(GENERATE, json={"model": "accept-llama", "prompt": "p"}, headers=headers)
    assert response.status_code == 202
    row = _job(db_session, response)
    assert row.dispatched_at is not None  # still published
    warnings = [r.getMessage() for r in caplog.records if r.name == "web.inference.service"]
    assert warnings == [f"request {row.id}: could not announce it queued: down"]


# --- cancel and who may see a job ----------------------------------------------------------


@pytest.fixture
def revoked(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(app.extensions["celery"].control, "revoke", calls.append)
    return calls


def test_cancelling_a_queued_job_ends_it_and_says_so(
    client: FlaskClient, db_session: Session, app: Flask, revoked: list[str]
) -> None:
    user = make_user()
    job = InferenceRequestFactory(user_id=user.id, attempt=2)
    before = float(INFERENCE_REQUESTS.labels("cancelled", "<unregistered>")._value.get())

    response = client.post(f"{REQUESTS}/{job.id}/cancel", headers=auth_headers(client, user))

    assert response.status_code == 202
    assert response.get_json()["status"] == "cancelled"
    [event] = app.extensions["events"].replay(job.id)
    assert (event["status"], event["attempt"], event["user_id"]) == ("cancelled", 2, str(user.id))
    assert revoked == [str(job.id)]
    assert INFERENCE_REQUESTS.labels("cancelled", "<unregistered>")._value.get() == before + 1
    assert app.extensions["redis"].get(cancel_key(job.id)) is None


def test_cancelling_a_running_job_asks_its_worker(
    client: FlaskClient, app: Flask, revoked: list[str]
) -> None:
    user = make_user()
    job = InferenceRequestFactory(user_id=user.id, status="running", worker_name="w")
    response = client.post(f"{REQUESTS}/{job.id}/cancel", headers=auth_headers(client, user))
    assert response.get_json()["status"] == "cancelling"
    redis = app.extensions["redis"]
    assert redis.get(cancel_key(job.id)) == b"1"
    assert 0 < redis.ttl(cancel_key(job.id)) <= app.extensions["settings"].event_ttl_s
    assert revoked == []
    assert app.extensions["events"].replay(job.id) == []


def test_staff_may_cancel_anyones_job_and_others_may_not_see_it(
    client: FlaskClient, revoked: list[str]
) -> None:
    job = InferenceRequestFactory(user_id=make_user().id)
    other = auth_headers(client, make_user())
    assert client.post(f"{REQUESTS}/{job.id}/cancel", headers=other).status_code == 404
    assert client.get(f"{REQUESTS}/{job.id}", headers=other).status_code == 404
    operator = auth_headers(client, make_user(Role.OPERATOR))
    assert client.get(f"{REQUESTS}/{job.id}", headers=operator).status_code == 200
    assert client.post(f"{REQUESTS}/{job.id}/cancel", headers=operator).status_code == 202
    assert client.get(f"{REQUESTS}/{uuid.uuid4()}", headers=operator).status_code == 404
