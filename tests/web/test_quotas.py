"""Quotas per account and per API key (web/inference/quotas.py, docs/security.md): waiting
jobs and the day's tokens refuse a job with 429 in each door's shape, nothing stored; the
defaults bind plain users only; an admin sets an account's own; a key narrows its owner's;
usage is visible to the account and to admins. Running jobs and sockets are held by real
processes: tests/pipeline/test_quotas_live.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ApiKeyTokenUsage, InferenceRequest, ModelStatus, Role, UserTokenUsage
from tests.factories import TEST_PASSWORD, InferenceRequestFactory, ModelReplicaFactory
from tests.support.identity import audit_actions, auth_headers, bearer, error_code, make_user

MODEL = "quota-llama"
DOORS = {
    "native": ("/api/v1/inference/generate", {"model": MODEL, "prompt": "hi"}),
    "ollama": ("/api/generate", {"model": MODEL, "prompt": "hi"}),
    "openai": ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True}),
}


@pytest.fixture(autouse=True)
def served(db_session: Session) -> None:
    ModelReplicaFactory(
        model__name=f"{MODEL}:latest",
        model__status=ModelStatus.AVAILABLE,
        node__last_heartbeat_at=utcnow(),
    )


def _jobs(db_session: Session, user_id: Any) -> int:
    db_session.expire_all()
    return db_session.scalar(
        select(func.count())
        .select_from(InferenceRequest)
        .where(InferenceRequest.user_id == user_id)
    )


def _submit(client: FlaskClient, headers: dict[str, str], door: str = "native", **body: Any) -> Any:
    path, payload = DOORS[door]
    return client.post(path, json={**payload, **body}, headers=headers)


def _refusal(response: Any, door: str) -> str:
    """The 429's code (or message, for Ollama's shape), after checking the door's shape."""
    # (Not the body in the message: an accepted door stream would wait for its job.)
    assert response.status_code == 429, response.status_code
    assert int(response.headers["Retry-After"]) >= 1
    body = response.get_json()
    if door == "ollama":
        assert set(body) == {"error"}
        assert isinstance(body["error"], str)
        return str(body["error"])
    if door == "openai":
        assert body["error"]["type"] == "rate_limit_error"
        return str(body["error"]["message"])
    return str(body["error"]["code"])


def _queue(db_session: Session, user: Any, count: int, **fields: Any) -> None:
    for _ in range(count):
        InferenceRequestFactory(user_id=user.id, model_name=f"{MODEL}:latest", **fields)
    db_session.flush()


@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_user_at_the_waiting_jobs_quota_is_refused_in_the_doors_shape(
    app_factory: Callable[..., Flask], db_session: Session, door: str
) -> None:
    client = app_factory(quota_max_queued_jobs=3).test_client()
    user = make_user()
    headers = auth_headers(client, user)
    _queue(db_session, user, 2)
    _queue(db_session, user, 5, status="running")  # running jobs do not wait
    _queue(db_session, user, 5, status="completed")
    below = _submit(client, headers, "native")
    assert below.status_code == 202, below.get_json()
    before = _jobs(db_session, user.id)

    refused = _submit(client, headers, door)

    said = _refusal(refused, door)
    assert said == "quota_queued_jobs" or "3 jobs waiting" in said
    assert _jobs(db_session, user.id) == before  # nothing stored


def test_the_refusal_names_the_limit_and_the_count(
    app_factory: Callable[..., Flask], db_session: Session
) -> None:
    client = app_factory(quota_max_queued_jobs=1).test_client()
    user = make_user()
    headers = auth_headers(client, user)
    _queue(db_session, user, 1)

    refused = _submit(client, headers)

    assert refused.status_code == 429
    assert refused.get_json()["error"]["details"] == {"limit": 1, "queued": 1}


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMIN])
def test_the_defaults_bind_plain_users_only(
    app_factory: Callable[..., Flask], db_session: Session, role: Role
) -> None:
    client = app_factory(quota_max_queued_jobs=1, quota_tokens_per_day=10).test_client()
    staff = make_user(role)
    _queue(db_session, staff, 3)
    db_session.add(UserTokenUsage(user_id=staff.id, day=utcnow().date(), tokens=1000, jobs=1))

    assert _submit(client, auth_headers(client, staff)).status_code == 202


def test_zero_means_no_limit(app_factory: Callable[..., Flask], db_session: Session) -> None:
    client = app_factory(quota_max_queued_jobs=0).test_client()
    user = make_user()
    _queue(db_session, user, 150)
    assert _submit(client, auth_headers(client, user)).status_code == 202


@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_user_past_the_days_tokens_is_refused_until_midnight_utc(
    app_factory: Callable[..., Flask], db_session: Session, door: str
) -> None:
    client = app_factory(quota_tokens_per_day=500).test_client()
    user = make_user()
    headers = auth_headers(client, user)
    yesterday = utcnow().date().fromordinal(utcnow().date().toordinal() - 1)
    db_session.add(UserTokenUsage(user_id=user.id, day=yesterday, tokens=10_000, jobs=9))
    db_session.add(UserTokenUsage(user_id=user.id, day=utcnow().date(), tokens=499, jobs=3))
    db_session.flush()
    below = _submit(client, headers, door)  # yesterday's tokens count for nothing today
    assert below.status_code in (200, 202)
    below.close()
    db_session.execute(
        UserTokenUsage.__table__.update()
        .where(UserTokenUsage.user_id == user.id, UserTokenUsage.day == utcnow().date())
        .values(tokens=500)
    )
    before = _jobs(db_session, user.id)

    refused = _submit(client, headers, door)

    said = _refusal(refused, door)
    assert said == "quota_tokens_per_day" or "500 tokens of today" in said
    assert int(refused.headers["Retry-After"]) <= 86_401
    assert _jobs(db_session, user.id) == before


def _admin(client: FlaskClient) -> dict[str, str]:
    return auth_headers(client, make_user(Role.ADMIN))


def test_an_admin_sets_an_accounts_own_quotas_and_null_restores_the_default(
    app_factory: Callable[..., Flask], db_session: Session
) -> None:
    client = app_factory(quota_max_queued_jobs=100).test_client()
    user = make_user()
    headers, admin = auth_headers(client, user), _admin(client)
    _queue(db_session, user, 2)

    changed = client.put(
        f"/api/v1/users/{user.id}/quotas",
        json={"max_queued_jobs": 2, "tokens_per_day": 0},
        headers=admin,
    )

    assert changed.status_code == 200, changed.get_json()
    body = changed.get_json()
    assert body["own_quotas"] == {"max_queued_jobs": 2, "tokens_per_day": 0}
    assert body["limits"]["max_queued_jobs"] == 2
    assert body["limits"]["tokens_per_day"] is None  # 0: no limit
    assert body["usage"]["queued_jobs"] == 2
    assert error_code(_submit(client, headers)) == "quota_queued_jobs"  # at once, no cache

    restored = client.put(
        f"/api/v1/users/{user.id}/quotas", json={"max_queued_jobs": None}, headers=admin
    )
    assert restored.get_json()["limits"]["max_queued_jobs"] == 100
    assert _submit(client, headers).status_code == 202


def test_an_admins_quotas_lift_a_staff_account_too(
    app_factory: Callable[..., Flask], db_session: Session
) -> None:
    client = app_factory().test_client()
    operator = make_user(Role.OPERATOR)
    headers = auth_headers(client, operator)
    _queue(db_session, operator, 1)
    client.put(
        f"/api/v1/users/{operator.id}/quotas", json={"max_queued_jobs": 1}, headers=_admin(client)
    )
    assert error_code(_submit(client, headers)) == "quota_queued_jobs"


@pytest.mark.parametrize(
    "body",
    [
        {"max_queued_jobs": -1},
        {"max_websockets": "many"},
        {"burst": 3},
        {"tokens_per_day": 1.5},
        {"max_running_jobs": "5"},
        {"max_queued_jobs": True},
    ],
)
def test_bad_quotas_are_refused_and_change_nothing(
    app_factory: Callable[..., Flask], db_session: Session, body: dict[str, Any]
) -> None:
    client = app_factory().test_client()
    user = make_user()
    answer = client.put(f"/api/v1/users/{user.id}/quotas", json=body, headers=_admin(client))
    assert answer.status_code == 422, answer.get_json()
    db_session.refresh(user)
    assert user.quotas == {}


def _key(client: FlaskClient, headers: dict[str, str], **limits: int) -> dict[str, str]:
    created = client.post(
        "/api/v1/users/api-keys",
        headers=headers,
        json={
            "name": "batch",
            "scopes": ["inference"],
            "current_password": TEST_PASSWORD,
            "limits": limits,
        },
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["limits"] == limits
    return bearer(created.get_json()["key"])


def test_a_keys_limits_narrow_its_owners_and_only_for_its_jobs(
    app_factory: Callable[..., Flask], db_session: Session
) -> None:
    client = app_factory(quota_max_queued_jobs=100, user_max_priority=6).test_client()
    user = make_user()
    login = auth_headers(client, user)
    key = _key(client, login, max_queued_jobs=1, max_priority=2)

    first = _submit(client, key, priority=6)
    assert first.status_code == 202
    row = db_session.get(InferenceRequest, first.get_json()["id"])
    assert row is not None
    assert row.priority == 2
    assert row.api_key_id is not None
    assert error_code(_submit(client, key)) == "quota_queued_jobs"
    by_login = _submit(client, login, priority=6)  # the account's own room is not the key's
    assert by_login.status_code == 202
    assert db_session.get(InferenceRequest, by_login.get_json()["id"]).priority == 6  # type: ignore[union-attr]


def test_a_keys_daily_tokens_count_its_own_jobs(
    app_factory: Callable[..., Flask], db_session: Session
) -> None:
    client = app_factory().test_client()
    user = make_user()
    login = auth_headers(client, user)
    key = _key(client, login, tokens_per_day=100)
    key_id = client.get("/api/v1/users/api-keys", headers=login).get_json()["items"][0]["id"]
    db_session.add(ApiKeyTokenUsage(api_key_id=key_id, day=utcnow().date(), tokens=100, jobs=2))
    db_session.flush()

    assert error_code(_submit(client, key)) == "quota_tokens_per_day"
    assert _submit(client, login).status_code == 202


@pytest.mark.parametrize(
    "limits",
    [
        {"max_priority": 10},
        {"max_queued_jobs": 0},
        {"rate": 5},
        {"tokens_per_day": -3},
        {"max_priority": "1"},
        {"max_websockets": True},
    ],
)
def test_bad_key_limits_are_refused(
    app_factory: Callable[..., Flask], limits: dict[str, Any]
) -> None:
    client = app_factory().test_client()
    answer = client.post(
        "/api/v1/users/api-keys",
        headers=auth_headers(client, make_user()),
        json={
            "name": "k",
            "scopes": ["inference"],
            "current_password": TEST_PASSWORD,
            "limits": limits,
        },
    )
    assert answer.status_code == 422, answer.get_json()


def test_usage_is_visible_to_its_account_and_to_admins_only(
    app_factory: Callable[..., Flask], db_session: Session
) -> None:
    client = app_factory(
        quota_max_queued_jobs=7, quota_max_running_jobs=2, quota_tokens_per_day=1000
    ).test_client()
    user = make_user()
    headers = auth_headers(client, user)
    _queue(db_session, user, 3)
    _queue(db_session, user, 1, status="running")
    db_session.add(UserTokenUsage(user_id=user.id, day=utcnow().date(), tokens=321, jobs=4))
    db_session.flush()

    mine = client.get("/api/v1/users/me/usage", headers=headers)

    assert mine.status_code == 200, mine.get_json()
    body = mine.get_json()
    assert body["user_id"] == str(user.id)
    assert body["day"] == utcnow().date().isoformat()
    assert body["limits"] == {
        "max_queued_jobs": 7,
        "max_running_jobs": 2,
        "tokens_per_day": 1000,
        "max_websockets": 20,
    }
    assert body["usage"] == {
        "queued_jobs": 3,
        "running_jobs": 1,
        "tokens_today": 321,
        "jobs_today": 4,
        "websockets": 0,
    }
    assert client.get(f"/api/v1/users/{user.id}/usage", headers=_admin(client)).get_json() == body
    other = auth_headers(client, make_user())
    assert client.get(f"/api/v1/users/{user.id}/usage", headers=other).status_code == 403


def test_quota_changes_are_audited(app_factory: Callable[..., Flask], db_session: Session) -> None:
    client = app_factory().test_client()
    user = make_user()
    client.put(
        f"/api/v1/users/{user.id}/quotas", json={"max_websockets": 3}, headers=_admin(client)
    )
    assert "user.quotas_changed" in audit_actions(db_session)
