"""Constant-shape authentication and the lockout of current-password checks.

No timing is asserted (the machines that run the suite are noisy): what makes the time
alike is that every branch does the same bcrypt work, and that is counted here through the
one function that runs bcrypt (`web.security.passwords._checkpw`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import ApiKey, AuditLogEntry, User
from tests.factories import TEST_PASSWORD
from tests.support.identity import auth_headers, error_code, make_user
from web.security import passwords

LOGIN = "/api/v1/auth/login"
KEYS = "/api/v1/users/api-keys"
PROFILE = "/api/v1/users/profile"
ME = "/api/v1/users/me"
WRONG = "wrong-password!"


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The cost ("04", "12", ...) of every bcrypt verification, in order."""
    calls: list[str] = []
    real = passwords._checkpw

    def spy(password: str, hashed: bytes) -> bool:
        calls.append(hashed.decode()[4:6])
        return real(password, hashed)

    monkeypatch.setattr(passwords, "_checkpw", spy)
    return calls


def _login(client: FlaskClient, username: str, password: str) -> Any:
    return client.post(LOGIN, json={"username": username, "password": password})


def _lock_by_login(client: FlaskClient, username: str) -> None:
    statuses = [_login(client, username, WRONG).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]


def _actions(session: Session, user_id: Any) -> list[tuple[str, dict[str, Any]]]:
    rows = session.scalars(
        select(AuditLogEntry)
        .where(AuditLogEntry.user_id == user_id, AuditLogEntry.action.like("auth.%"))
        .order_by(AuditLogEntry.id)
    )
    return [(row.action, row.details) for row in rows]


# --- logins: every branch does the same work and a lock looks the same ------------------


def test_every_login_branch_does_one_verification_of_the_same_cost(
    client: FlaskClient, bcrypt_calls: list[str]
) -> None:
    user = make_user()
    inactive = make_user(is_active=False)
    locked = make_user()
    _lock_by_login(client, locked.username)
    _lock_by_login(client, "nobody-at-all")
    branches: dict[str, tuple[str, str]] = {
        "right": (user.username, TEST_PASSWORD),
        "wrong": (user.username, WRONG),
        "unknown": ("ghost-of-nobody", WRONG),
        "inactive": (inactive.username, TEST_PASSWORD),
        "locked, right password": (locked.username, TEST_PASSWORD),
        "locked, wrong password": (locked.username, WRONG),
        "unknown, locked": ("nobody-at-all", WRONG),
    }
    seen = {}
    for branch, (username, password) in branches.items():
        bcrypt_calls.clear()
        _login(client, username, password)
        seen[branch] = list(bcrypt_calls)

    # The test hashes and BCRYPT_ROUNDS are both cost 4 in the suite.
    assert seen == {branch: ["04"] for branch in branches}


def test_a_locked_account_and_a_locked_unknown_name_answer_alike(client: FlaskClient) -> None:
    user = make_user()
    _lock_by_login(client, user.username)
    _lock_by_login(client, "nobody-here")

    real = _login(client, user.username, TEST_PASSWORD)
    phantom = _login(client, "nobody-here", TEST_PASSWORD)

    assert real.status_code == phantom.status_code == 429
    assert error_code(real) == error_code(phantom) == "account_locked"

    def shape(response: Any) -> dict[str, Any]:
        body = response.get_json()["error"]
        wait = body["details"].pop("retry_after_s")
        assert 800 < wait <= 900
        # flask-limiter re-derives the header from the clock: it may be a second less.
        assert 0 <= wait - int(response.headers["Retry-After"]) <= 1
        body.pop("request_id", None)
        return {"body": body, "headers": sorted(response.headers.keys())}

    assert shape(real) == shape(phantom)


def test_failures_spread_over_the_window_lock_for_a_whole_window_either_way(
    client: FlaskClient, db_session: Session, redis_client: Redis
) -> None:
    """The lock runs a whole LOGIN_LOCKOUT_S from the failure that reaches the limit, for a
    real account and an unknown name alike, however long ago the first failure was: a
    shorter Retry-After would tell the unknown name apart."""
    user = make_user()
    for _ in range(4):
        assert _login(client, user.username, WRONG).status_code == 401
        assert _login(client, "nobody-spread", WRONG).status_code == 401
    # Two minutes pass: the first failures are that old for both.
    db_session.execute(
        update(User)
        .where(User.id == user.id)
        .values(first_failed_login_at=User.first_failed_login_at - timedelta(seconds=120))
    )
    db_session.flush()
    key = "omx:login-failures:" + hashlib.sha256(b"nobody-spread").hexdigest()
    redis_client.expire(key, int(redis_client.ttl(key)) - 120)

    real = _login(client, user.username, WRONG)
    phantom = _login(client, "nobody-spread", WRONG)

    assert real.status_code == phantom.status_code == 429
    waits = [int(r.headers["Retry-After"]) for r in (real, phantom)]
    assert all(898 <= wait <= 900 for wait in waits), waits


def test_wrong_unknown_and_inactive_logins_answer_alike(client: FlaskClient) -> None:
    user = make_user()
    inactive = make_user(is_active=False)
    answers = [
        _login(client, user.username, WRONG),
        _login(client, "ghost-of-nobody", WRONG),
        _login(client, inactive.username, TEST_PASSWORD),
    ]
    bodies = []
    for answer in answers:
        body = answer.get_json()["error"]
        body.pop("request_id", None)
        bodies.append((answer.status_code, body, sorted(answer.headers.keys())))
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0][0] == 401


# --- current-password checks: counted, audited, locked like logins -----------------------

Attempt = Callable[[FlaskClient, dict[str, str], str], Any]


def _create_key(client: FlaskClient, headers: dict[str, str], password: str) -> Any:
    body = {"name": "k", "scopes": ["read"], "current_password": password}
    return client.post(KEYS, headers=headers, json=body)


def _change_email(client: FlaskClient, headers: dict[str, str], password: str) -> Any:
    body = {"current_password": password, "email": "moved-elsewhere@example.com"}
    return client.put(PROFILE, headers=headers, json=body)


def _delete_me(client: FlaskClient, headers: dict[str, str], password: str) -> Any:
    return client.delete(ME, headers=headers, json={"password": password})


CHECKS: dict[str, tuple[Attempt, str]] = {
    "api key": (_create_key, "api_key.created"),
    "profile": (_change_email, "user.profile_updated"),
    "deletion": (_delete_me, "user.deleted"),
}


@pytest.mark.parametrize("check", CHECKS)
def test_a_wrong_current_password_counts_toward_the_lockout_and_is_audited(
    client: FlaskClient, db_session: Session, check: str
) -> None:
    attempt, purpose = CHECKS[check]
    user = make_user()
    headers = auth_headers(client, user)

    refused = attempt(client, headers, WRONG)

    assert refused.status_code == 401
    assert error_code(refused) == "invalid_credentials"
    db_session.refresh(user)
    assert user.failed_login_count == 1
    assert _actions(db_session, user.id)[-1] == (
        "auth.password_check_failed",
        {"failures": 1, "purpose": purpose},
    )


def test_guessing_the_current_password_locks_the_account(
    client: FlaskClient, db_session: Session, bcrypt_calls: list[str]
) -> None:
    user = make_user()
    headers = auth_headers(client, user)

    statuses = [_create_key(client, headers, f"guess-number-{n}").status_code for n in range(5)]
    bcrypt_calls.clear()
    right = _create_key(client, headers, TEST_PASSWORD)

    assert statuses == [401, 401, 401, 401, 429]
    assert right.status_code == 429  # the right password does not get through a lock
    assert error_code(right) == "account_locked"
    assert bcrypt_calls == ["04"]  # refused after the same work as any check
    assert db_session.scalar(select(ApiKey).where(ApiKey.user_id == user.id)) is None
    # The same counter as logins: the account is locked for logging in too.
    login = _login(client, user.username, TEST_PASSWORD)
    assert login.status_code == 429
    actions = [action for action, _ in _actions(db_session, user.id)]
    assert actions.count("auth.password_check_failed") == 5
    assert "auth.lockout" in actions
    assert "auth.password_check_locked" in actions
    assert actions[-1] == "auth.login_locked"


def test_login_failures_and_password_checks_share_one_count(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    for _ in range(4):
        assert _login(client, user.username, WRONG).status_code == 401

    last = _change_email(client, headers, WRONG)

    assert last.status_code == 429
    db_session.refresh(user)
    assert user.locked_until is not None


def test_the_right_current_password_resets_the_count(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    for _ in range(3):
        assert _create_key(client, headers, WRONG).status_code == 401

    assert _create_key(client, headers, TEST_PASSWORD).status_code == 201

    db_session.refresh(user)
    assert (user.failed_login_count, user.first_failed_login_at) == (0, None)


def test_a_locked_account_cannot_delete_itself(client: FlaskClient, db_session: Session) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    _lock_by_login(client, user.username)

    refused = _delete_me(client, headers, TEST_PASSWORD)

    assert refused.status_code == 429
    db_session.refresh(user)
    assert user.deleted_at is None
    assert db_session.get(User, user.id) is not None
