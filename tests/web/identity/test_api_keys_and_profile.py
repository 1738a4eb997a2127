"""API keys (shown once, scoped, revocable at once) and the caller's own profile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ApiKey, Role
from tests.factories import TEST_PASSWORD
from tests.support.identity import audit_actions, auth_headers, bearer, error_code, login, make_user

KEYS = "/api/v1/users/api-keys"
PROFILE = "/api/v1/users/profile"


def _create_key(client: FlaskClient, headers: dict[str, str], **body: object) -> dict[str, object]:
    response = client.post(
        KEYS,
        headers=headers,
        json={"name": "ci", "scopes": ["admin"], "current_password": TEST_PASSWORD, **body},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def test_a_key_is_shown_once_and_stored_hashed(client: FlaskClient, db_session: Session) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    created = _create_key(client, headers)
    key = str(created["key"])

    assert key.startswith("omx_")
    listed = client.get(KEYS, headers=headers).get_json()["items"]
    assert [item["id"] for item in listed] == [created["id"]]
    assert "key" not in listed[0]
    row = db_session.scalar(select(ApiKey).where(ApiKey.user_id == user.id))
    assert row is not None
    assert key not in (row.key_hash, row.prefix)
    assert "api_key.created" in audit_actions(db_session, user.id)


def test_a_key_authenticates_as_bearer_and_records_its_use(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    created = _create_key(client, auth_headers(client, user))

    response = client.get(PROFILE, headers=bearer(str(created["key"])))

    assert response.status_code == 200
    assert response.get_json()["username"] == user.username
    row = db_session.get(ApiKey, created["id"])
    assert row is not None
    assert row.last_used_at is not None


def test_scopes_narrow_what_a_key_may_do(client: FlaskClient) -> None:
    admin = make_user(Role.ADMIN)
    headers = auth_headers(client, admin)
    read_only = _create_key(client, headers, scopes=["read"])
    full = _create_key(client, headers, scopes=["admin"])

    assert client.get("/api/v1/users", headers=bearer(str(full["key"]))).status_code == 200
    assert client.get("/api/v1/users", headers=bearer(str(read_only["key"]))).status_code == 403


def test_a_key_never_exceeds_its_owners_role(client: FlaskClient) -> None:
    user = make_user()
    key = _create_key(client, auth_headers(client, user), scopes=["admin"])
    assert client.get("/api/v1/users", headers=bearer(str(key["key"]))).status_code == 403


def test_a_revoked_key_is_refused_at_once(client: FlaskClient, db_session: Session) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    created = _create_key(client, headers)
    key_headers = bearer(str(created["key"]))
    assert client.get(PROFILE, headers=key_headers).status_code == 200

    assert client.delete(f"{KEYS}/{created['id']}", headers=headers).status_code == 204

    refused = client.get(PROFILE, headers=key_headers)
    assert refused.status_code == 401
    assert error_code(refused) == "invalid_api_key"
    assert "api_key.revoked" in audit_actions(db_session, user.id)


def test_an_expired_key_is_refused(client: FlaskClient, db_session: Session) -> None:
    created = _create_key(client, auth_headers(client, make_user()), expires_in_days=1)
    row = db_session.get(ApiKey, created["id"])
    assert row is not None
    row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    db_session.flush()
    assert client.get(PROFILE, headers=bearer(str(created["key"]))).status_code == 401


def test_a_tampered_or_unknown_key_is_refused(client: FlaskClient) -> None:
    created = _create_key(client, auth_headers(client, make_user()))
    key = str(created["key"])
    for forged in (key[:-2] + "xx", "omx_0000000000_" + "a" * 43, "omx_short"):
        response = client.get(PROFILE, headers=bearer(forged))
        assert response.status_code == 401
        assert error_code(response) == "invalid_api_key"


def test_another_users_key_cannot_be_revoked(client: FlaskClient) -> None:
    created = _create_key(client, auth_headers(client, make_user()))
    thief = auth_headers(client, make_user())
    assert client.delete(f"{KEYS}/{created['id']}", headers=thief).status_code == 404


def test_key_requests_are_validated(client: FlaskClient) -> None:
    headers = auth_headers(client, make_user())
    for body in (
        {"name": "x", "scopes": [], "current_password": TEST_PASSWORD},
        {"name": "x", "scopes": ["root"], "current_password": TEST_PASSWORD},
        {"name": "", "scopes": ["read"], "current_password": TEST_PASSWORD},
        {"name": "x", "scopes": ["read"], "expires_in_days": 0, "current_password": TEST_PASSWORD},
    ):
        assert client.post(KEYS, headers=headers, json=body).status_code == 422


# --- profile ---------------------------------------------------------------------------


def test_profile_changes_need_the_current_password(client: FlaskClient) -> None:
    headers = auth_headers(client, make_user())
    response = client.put(
        PROFILE,
        headers=headers,
        json={"current_password": "not-my-password", "email": "n@example.com"},
    )
    assert response.status_code == 401
    assert error_code(response) == "invalid_credentials"


def test_email_change(client: FlaskClient, db_session: Session) -> None:
    user = make_user()
    response = client.put(
        PROFILE,
        headers=auth_headers(client, user),
        json={"current_password": TEST_PASSWORD, "email": "moved@example.com"},
    )
    assert response.status_code == 200
    assert response.get_json()["email"] == "moved@example.com"
    taken = make_user()
    clash = client.put(
        PROFILE,
        headers=auth_headers(client, user),
        json={"current_password": TEST_PASSWORD, "email": taken.email},
    )
    assert clash.status_code == 409


def test_password_change_revokes_the_other_sessions_only(client: FlaskClient) -> None:
    user = make_user()
    other = login(client, user)
    current = bearer(login(client, user)["access_token"])

    response = client.put(
        PROFILE,
        headers=current,
        json={"current_password": TEST_PASSWORD, "new_password": "  a brand new passphrase  "},
    )

    assert response.status_code == 200
    assert client.get(PROFILE, headers=current).status_code == 200
    assert client.get(PROFILE, headers=bearer(other["access_token"])).status_code == 401
    # Spaces are part of the password, not trimmed away.
    login(client, user, password="  a brand new passphrase  ")
    refused = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": "a brand new passphrase"}
    )
    assert refused.status_code == 401


def test_a_weak_new_password_is_422(client: FlaskClient) -> None:
    headers = auth_headers(client, make_user())
    response = client.put(
        PROFILE,
        headers=headers,
        json={"current_password": TEST_PASSWORD, "new_password": "password123"},
    )
    assert response.status_code == 422


def test_creating_a_key_needs_the_password(client: FlaskClient) -> None:
    headers = auth_headers(client, make_user())
    response = client.post(
        KEYS,
        headers=headers,
        json={"name": "k", "scopes": ["admin"], "current_password": "guess-1234"},
    )
    assert response.status_code == 401
    assert (
        client.post(KEYS, headers=headers, json={"name": "k", "scopes": ["admin"]}).status_code
        == 422
    )


def test_a_password_change_revokes_api_keys(client: FlaskClient) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    key = str(_create_key(client, headers)["key"])
    client.put(
        PROFILE,
        headers=headers,
        json={"current_password": TEST_PASSWORD, "new_password": "another long passphrase"},
    )
    assert client.get(PROFILE, headers=bearer(key)).status_code == 401


def test_a_password_change_ends_the_other_refresh_tokens(client: FlaskClient) -> None:
    user = make_user()
    other = login(client, user)
    current = bearer(login(client, user)["access_token"])
    client.put(
        PROFILE,
        headers=current,
        json={"current_password": TEST_PASSWORD, "new_password": "another long passphrase"},
    )
    assert (
        client.post("/api/v1/auth/refresh", headers=bearer(other["refresh_token"])).status_code
        == 401
    )
