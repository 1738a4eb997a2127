"""The inference API's reading side and its validation, on rows made by factories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient

from db.models import Role
from tests.factories import InferenceRequestFactory
from tests.support.identity import auth_headers, error_code, make_user

REQUESTS = "/api/v1/inference/requests"


def test_users_list_their_own_requests_and_staff_list_all(client: FlaskClient) -> None:
    alice, bob = make_user(), make_user()
    for _ in range(3):
        InferenceRequestFactory(user_id=alice.id)
    InferenceRequestFactory(user_id=bob.id)

    mine = client.get(REQUESTS, headers=auth_headers(client, alice)).get_json()
    everyone = client.get(
        REQUESTS, headers=auth_headers(client, make_user(Role.OPERATOR))
    ).get_json()

    assert mine["total"] == 3
    assert {item["user_id"] for item in mine["items"]} == {str(alice.id)}
    assert everyone["total"] == 4


def test_filters_and_pages(client: FlaskClient) -> None:
    user = make_user()
    old = datetime.now(UTC) - timedelta(days=3)
    InferenceRequestFactory(user_id=user.id, status="completed", model_name="a:latest")
    InferenceRequestFactory(user_id=user.id, status="failed", model_name="a:latest")
    InferenceRequestFactory(
        user_id=user.id, status="completed", model_name="b:latest", created_at=old
    )
    headers = auth_headers(client, user)

    def total(query: str) -> int:
        return int(client.get(f"{REQUESTS}?{query}", headers=headers).get_json()["total"])

    assert total("status=completed") == 2
    assert total("model=a:latest") == 2
    assert total(f"since={(old + timedelta(days=1)).isoformat().replace('+00:00', 'Z')}") == 2
    page = client.get(f"{REQUESTS}?per_page=2&page=2", headers=headers).get_json()
    assert (page["total"], len(page["items"]), page["page"]) == (3, 1, 2)
    assert client.get(f"{REQUESTS}?status=bogus", headers=headers).status_code == 422


def test_someone_elses_request_is_404(client: FlaskClient) -> None:
    job = InferenceRequestFactory(user_id=make_user().id)
    response = client.get(f"{REQUESTS}/{job.id}", headers=auth_headers(client, make_user()))
    assert response.status_code == 404


def test_detail_has_the_contract_fields(client: FlaskClient) -> None:
    user = make_user()
    job = InferenceRequestFactory(
        user_id=user.id,
        status="completed",
        output="blue",
        done_reason="stop",
        eval_count=1,
        total_duration=10,
    )
    body = client.get(f"{REQUESTS}/{job.id}", headers=auth_headers(client, user)).get_json()
    for field in (
        "status",
        "model",
        "output",
        "done_reason",
        "prompt_eval_count",
        "eval_count",
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
        "queued_at",
        "started_at",
        "completed_at",
        "attempt",
        "node_id",
        "worker",
        "error",
        "links",
    ):
        assert field in body
    assert body["links"]["ws"] == f"/ws/inference/{job.id}"


def test_an_ended_request_cannot_be_cancelled(client: FlaskClient) -> None:
    user = make_user()
    job = InferenceRequestFactory(user_id=user.id, status="completed")
    response = client.post(f"{REQUESTS}/{job.id}/cancel", headers=auth_headers(client, user))
    assert response.status_code == 409
    assert error_code(response) == "request_ended"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "llama3.2"},  # no prompt
        {"model": "llama3.2", "prompt": "x", "priority": 10},
        {"model": "bad name!", "prompt": "x"},
        {"model": "llama3.2", "prompt": "x", "format": "xml"},
        {"model": "llama3.2", "prompt": "x", "unknown": 1},
    ],
)
def test_generate_validation(client: FlaskClient, body: dict[str, object]) -> None:
    response = client.post(
        "/api/v1/inference/generate", json=body, headers=auth_headers(client, make_user())
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"model": "llama3.2", "messages": []},
        {"model": "llama3.2", "messages": [{"role": "robot", "content": "hi"}]},
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "web"}],
        },
    ],
)
def test_chat_validation(client: FlaskClient, body: dict[str, object]) -> None:
    response = client.post(
        "/api/v1/inference/chat", json=body, headers=auth_headers(client, make_user())
    )
    assert response.status_code == 422


def test_a_bad_idempotency_key_is_400(client: FlaskClient) -> None:
    headers = {**auth_headers(client, make_user()), "Idempotency-Key": "has space"}
    response = client.post(
        "/api/v1/inference/generate", headers=headers, json={"model": "llama3.2", "prompt": "x"}
    )
    assert response.status_code == 400
    assert error_code(response) == "invalid_idempotency_key"
