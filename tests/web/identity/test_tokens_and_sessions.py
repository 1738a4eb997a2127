"""Refresh rotation and reuse detection, logout, sessions, and attacks on the JWTs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token, create_refresh_token
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import DEV_JWT_SECRET_KEY
from db.models import UserSession
from tests.support.identity import audit_actions, bearer, error_code, login, make_user
from web.security.principal import principal_cache
from web.security.tokens import REVOKED_FAMILY_KEY

PROFILE = "/api/v1/users/profile"


def _refresh(client: FlaskClient, refresh_token: str) -> object:
    return client.post("/api/v1/auth/refresh", headers=bearer(refresh_token))


def test_refresh_rotates_and_the_old_token_stops_working(client: FlaskClient) -> None:
    tokens = login(client, make_user())

    rotated = _refresh(client, tokens["refresh_token"])

    assert rotated.status_code == 200  # type: ignore[attr-defined]
    fresh = rotated.get_json()  # type: ignore[attr-defined]
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert client.get(PROFILE, headers=bearer(fresh["access_token"])).status_code == 200
    again = _refresh(client, tokens["refresh_token"])
    assert again.status_code == 401  # type: ignore[attr-defined]


def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    tokens = login(client, user)
    fresh = _refresh(client, tokens["refresh_token"]).get_json()  # type: ignore[attr-defined]

    reuse = _refresh(client, tokens["refresh_token"])

    assert error_code(reuse) == "token_reused"
    # Everything the family issued is dead: the newest access and refresh tokens too.
    assert client.get(PROFILE, headers=bearer(fresh["access_token"])).status_code == 401
    assert _refresh(client, fresh["refresh_token"]).status_code == 401  # type: ignore[attr-defined]
    assert "auth.refresh_reuse" in audit_actions(db_session, user.id)


def test_refresh_reuse_ends_the_login_in_the_database_too(
    client: FlaskClient, db_session: Session, redis_client: Redis
) -> None:
    """The blocklist entry lives only as long as an access token could; the login must stay
    ended after it expires, so every session row of the family is revoked in the database."""
    user = make_user()
    other = login(client, user)  # another login of the same user: left alone
    tokens = login(client, user)
    fresh = _refresh(client, tokens["refresh_token"]).get_json()  # type: ignore[attr-defined]
    newer = _refresh(client, fresh["refresh_token"]).get_json()  # type: ignore[attr-defined]
    family = jwt.decode(tokens["refresh_token"], options={"verify_signature": False})["fam"]

    assert error_code(_refresh(client, fresh["refresh_token"])) == "token_reused"

    rows = db_session.scalars(
        select(UserSession).where(UserSession.family_id == uuid.UUID(family))
    ).all()
    assert len(rows) == 3
    assert all(row.revoked_at is not None for row in rows)
    assert sorted(str(row.revoked_reason) for row in rows) == [
        "refresh_reuse",
        "rotated",
        "rotated",
    ]
    # The blocklist entry expires (here: at once); nothing of the family comes back.
    assert redis_client.delete(REVOKED_FAMILY_KEY.format(family)) == 1
    with client.application.app_context():
        principal_cache().forget(family_ids=[uuid.UUID(family)])
    assert _refresh(client, newer["refresh_token"]).status_code == 401  # type: ignore[attr-defined]
    assert _refresh(client, tokens["refresh_token"]).status_code == 401  # type: ignore[attr-defined]
    live = client.get("/api/v1/users/sessions", headers=bearer(other["access_token"]))
    assert family not in {item["id"] for item in live.get_json()["items"]}
    assert _refresh(client, other["refresh_token"]).status_code == 200  # type: ignore[attr-defined]


def test_logout_rejects_the_access_token_at_once(client: FlaskClient, db_session: Session) -> None:
    user = make_user()
    tokens = login(client, user)
    headers = bearer(tokens["access_token"])

    assert client.post("/api/v1/users/logout", headers=headers).status_code == 204

    after = client.get(PROFILE, headers=headers)
    assert after.status_code == 401
    assert error_code(after) == "token_revoked"
    assert _refresh(client, tokens["refresh_token"]).status_code == 401  # type: ignore[attr-defined]
    assert "auth.logout" in audit_actions(db_session, user.id)


def test_logout_leaves_other_logins_alone(client: FlaskClient) -> None:
    user = make_user()
    phone, laptop = login(client, user), login(client, user)
    client.post("/api/v1/users/logout", headers=bearer(phone["access_token"]))
    assert client.get(PROFILE, headers=bearer(laptop["access_token"])).status_code == 200


def test_sessions_are_listed_and_can_be_ended(client: FlaskClient) -> None:
    user = make_user()
    first, second = login(client, user), login(client, user)
    headers = bearer(first["access_token"])

    listed = client.get("/api/v1/users/sessions", headers=headers).get_json()["items"]
    assert len(listed) == 2
    assert sum(item["current"] for item in listed) == 1
    other = next(item for item in listed if not item["current"])

    assert (
        client.delete(f"/api/v1/users/sessions/{other['id']}", headers=headers).status_code == 204
    )
    assert client.get(PROFILE, headers=bearer(second["access_token"])).status_code == 401
    assert len(client.get("/api/v1/users/sessions", headers=headers).get_json()["items"]) == 1


def test_another_users_session_is_not_found(client: FlaskClient) -> None:
    alice, bob = make_user(), make_user()
    login(client, alice)
    bob_headers = bearer(login(client, bob)["access_token"])
    alice_headers = bearer(login(client, alice)["access_token"])
    [alice_session, *_] = client.get("/api/v1/users/sessions", headers=alice_headers).get_json()[
        "items"
    ]
    response = client.delete(f"/api/v1/users/sessions/{alice_session['id']}", headers=bob_headers)
    assert response.status_code == 404


# --- attacks on the tokens -------------------------------------------------------------


def _forge(claims: dict[str, object], key: str = DEV_JWT_SECRET_KEY, alg: str = "HS256") -> str:
    now = datetime.now(UTC)
    payload = {
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=5),
        "jti": "x",
        "type": "access",
        "fresh": False,
        **claims,
    }
    return jwt.encode(payload, key if alg != "none" else None, algorithm=alg)  # type: ignore[arg-type]


@pytest.fixture
def victim(client: FlaskClient) -> dict[str, object]:
    user = make_user()
    tokens = login(client, user)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return {"user": user, "tokens": tokens, "claims": claims}


def test_alg_none_is_refused(client: FlaskClient, victim: dict[str, object]) -> None:
    token = _forge(victim["claims"], alg="none")  # type: ignore[arg-type]
    response = client.get(PROFILE, headers=bearer(token))
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


def test_a_token_signed_with_another_key_is_refused(
    client: FlaskClient, victim: dict[str, object]
) -> None:
    token = _forge(victim["claims"], key="an-attacker-chosen-key-of-32-bytes!")  # type: ignore[arg-type]
    assert error_code(client.get(PROFILE, headers=bearer(token))) == "invalid_token"


def test_an_expired_token_is_refused(client: FlaskClient, victim: dict[str, object]) -> None:
    claims = {
        **victim["claims"],  # type: ignore[dict-item]
        "exp": datetime.now(UTC) - timedelta(seconds=5),
        "iat": datetime.now(UTC) - timedelta(minutes=20),
        "nbf": datetime.now(UTC) - timedelta(minutes=20),
    }
    response = client.get(PROFILE, headers=bearer(_forge(claims)))
    assert response.status_code == 401
    assert error_code(response) == "token_expired"


def test_a_refresh_token_is_not_an_access_token(
    client: FlaskClient, victim: dict[str, object]
) -> None:
    refresh = victim["tokens"]["refresh_token"]  # type: ignore[index]
    response = client.get(PROFILE, headers=bearer(refresh))
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


def test_an_access_token_is_not_a_refresh_token(
    client: FlaskClient, victim: dict[str, object]
) -> None:
    access = victim["tokens"]["access_token"]  # type: ignore[index]
    response = _refresh(client, access)
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert error_code(response) == "invalid_token"


def test_a_deleted_users_token_is_refused(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    headers = bearer(login(client, user)["access_token"])
    db_session.delete(user)
    db_session.flush()
    response = client.get(PROFILE, headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


def test_tokens_we_did_not_issue_for_a_session_are_refused(app: Flask, client: FlaskClient) -> None:
    user = make_user()
    with app.app_context():
        no_family = create_access_token(identity=str(user.id))  # validly signed, no "fam"
        stray_refresh = create_refresh_token(identity=str(user.id), additional_claims={"fam": "x"})
    assert client.get(PROFILE, headers=bearer(no_family)).status_code == 401
    assert _refresh(client, stray_refresh).status_code == 401  # type: ignore[attr-defined]


def test_no_token_is_401_with_the_contract(client: FlaskClient) -> None:
    response = client.get(PROFILE)
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_bearer_scheme_is_case_insensitive(client: FlaskClient) -> None:
    token = login(client, make_user())["access_token"]
    assert client.get(PROFILE, headers={"Authorization": f"bearer {token}"}).status_code == 200
