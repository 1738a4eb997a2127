"""Registration and login: roles are never chosen, passwords follow the policy, guessing locks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Role, User
from tests.factories import TEST_PASSWORD
from tests.support.identity import audit_actions, error_code, login, make_user

GOOD = {"username": "newcomer", "email": "newcomer@example.com", "password": "plenty-long-pass"}


def test_register_creates_a_plain_user(client: FlaskClient, db_session: Session) -> None:
    response = client.post("/api/v1/auth/register", json=GOOD)

    assert response.status_code == 201
    body = response.get_json()
    assert body["role"] == "user"
    assert "password" not in str(body)
    assert "auth.register" in audit_actions(db_session)


@pytest.mark.parametrize(
    "extra", [{"role": "admin"}, {"roles": ["admin"]}, {"is_active": False, "role": "operator"}]
)
def test_register_never_honours_privilege_fields(
    client: FlaskClient, db_session: Session, extra: dict[str, object]
) -> None:
    response = client.post("/api/v1/auth/register", json={**GOOD, **extra})

    assert response.status_code == 201
    assert (response.get_json()["role"], response.get_json()["is_active"]) == ("user", True)
    user = db_session.scalar(select(User).where(User.username == "newcomer"))
    assert user is not None
    assert (user.role, user.is_active) == (Role.USER, True)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short-pw", "at least 10"),
        ("newcomer", "at least 10"),
        ("Newcomer12", "the username"),
        ("password123", "too common"),
    ],
)
def test_register_applies_the_password_policy(
    client: FlaskClient, password: str, reason: str
) -> None:
    response = client.post(
        "/api/v1/auth/register",
        json={
            **GOOD,
            "password": password,
            "username": "Newcomer12" if reason == "the username" else "newcomer",
        },
    )
    assert response.status_code == 422
    assert reason in str(response.get_json()["error"]["details"])


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"username": "NEWCOMER"}, "username_taken"),
        ({"email": "NewComer@Example.com"}, "email_taken"),
    ],
)
def test_register_conflicts_are_409_case_insensitively(
    client: FlaskClient, change: dict[str, str], code: str
) -> None:
    assert client.post("/api/v1/auth/register", json=GOOD).status_code == 201
    other = {"username": "someone", "email": "someone@example.com", "password": GOOD["password"]}
    response = client.post("/api/v1/auth/register", json={**other, **change})
    assert response.status_code == 409
    assert error_code(response) == code


@pytest.mark.parametrize(
    "bad", [{"username": "a"}, {"email": "not-an-email"}, {"username": "bad name!"}]
)
def test_register_validates_username_and_email(client: FlaskClient, bad: dict[str, str]) -> None:
    assert client.post("/api/v1/auth/register", json={**GOOD, **bad}).status_code == 422


def test_login_answers_the_contract(client: FlaskClient, db_session: Session) -> None:
    user = make_user()
    tokens = login(client, user)

    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert "auth.login" in audit_actions(db_session, user.id)


def test_login_by_email_works(client: FlaskClient) -> None:
    user = make_user()
    response = client.post(
        "/api/v1/auth/login", json={"username": user.email.upper(), "password": TEST_PASSWORD}
    )
    assert response.status_code == 200


def test_unknown_user_and_wrong_password_look_the_same(client: FlaskClient) -> None:
    user = make_user()
    unknown = client.post("/api/v1/auth/login", json={"username": "ghost", "password": "x" * 12})
    wrong = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": "x" * 12}
    )
    inactive = make_user(is_active=False)
    disabled = client.post(
        "/api/v1/auth/login", json={"username": inactive.username, "password": TEST_PASSWORD}
    )

    assert unknown.status_code == wrong.status_code == disabled.status_code == 401
    assert unknown.get_json() == wrong.get_json() == disabled.get_json()


def test_five_failures_lock_the_account(client: FlaskClient, db_session: Session) -> None:
    user = make_user()
    bad = {"username": user.username, "password": "wrong-password!"}
    statuses = [client.post("/api/v1/auth/login", json=bad).status_code for _ in range(5)]

    assert statuses == [401, 401, 401, 401, 429]
    locked = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": TEST_PASSWORD}
    )
    assert locked.status_code == 429  # the right password does not unlock it early
    assert error_code(locked) == "account_locked"
    assert 800 < int(locked.headers["Retry-After"]) <= 900
    actions = audit_actions(db_session, user.id)
    assert actions.count("auth.login_failed") == 5
    assert "auth.lockout" in actions
    assert "auth.login_locked" in actions


def test_the_lock_ends_and_a_good_login_resets_the_count(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user(
        failed_login_count=5,
        locked_until=datetime.now(UTC) - timedelta(seconds=1),
        first_failed_login_at=datetime.now(UTC) - timedelta(minutes=16),
    )
    login(client, user)
    db_session.refresh(user)
    assert (user.failed_login_count, user.locked_until) == (0, None)


def test_failures_outside_the_window_start_a_new_count(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user(
        failed_login_count=4, first_failed_login_at=datetime.now(UTC) - timedelta(minutes=20)
    )
    response = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": "wrong-password!"}
    )
    assert response.status_code == 401
    db_session.refresh(user)
    assert user.failed_login_count == 1


def test_an_unknown_login_locks_like_a_real_one(client: FlaskClient) -> None:
    body = {"username": "nobody-here", "password": "wrong-password!"}
    statuses = [client.post("/api/v1/auth/login", json=body).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]  # same as test_five_failures_lock_the_account


def test_emails_compare_the_way_they_are_stored(client: FlaskClient) -> None:
    body = {"username": "dotted", "email": "İnfo@example.com", "password": "plenty-long-pass"}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    response = client.post(
        "/api/v1/auth/login", json={"username": "İnfo@example.com", "password": "plenty-long-pass"}
    )
    assert response.status_code == 200
    clash = client.post(
        "/api/v1/auth/register", json={**body, "username": "other", "email": "İNFO@example.com"}
    )
    assert clash.status_code == 409
