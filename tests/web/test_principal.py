"""Resolving the caller (web/security/principal.py) at its edges: the bearer header, API key
expiry to the second and the once-a-minute last-use write, accounts that may no longer sign
in, and what the principal cache may and may not answer (expiry is checked on every use; a
revocation evicts at once)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import jwt
import pytest
from flask import Flask, g
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ApiKey, AuditLogEntry, Role, User
from tests.factories import TEST_PASSWORD, NodeFactory
from tests.support.identity import bearer, error_code, login, make_user
from web.errors import Forbidden, Unauthorized
from web.security import principal as principal_module
from web.security.policy import Permission, permissions_for
from web.security.principal import (
    Account,
    Principal,
    authenticated,
    current_principal,
    require,
)

PROFILE = "/api/v1/users/profile"
KEYS = "/api/v1/users/api-keys"
USERS = "/api/v1/users"


@pytest.fixture
def cache_listening(app: Flask) -> Iterator[None]:
    """The principal cache serves only while it hears evictions: wait until it does."""
    cache = app.extensions["principal_cache"]
    cache.get("warm-up")
    assert cache.listening.wait(5)
    yield
    with cache.lock:
        cache.entries.clear()


def _cached(app: Flask, kind: str) -> bool:
    return any(key.startswith(f"{kind}:") for key in app.extensions["principal_cache"].entries)


def _key(client: FlaskClient, user: User, scopes: list[str] | None = None, **body: object) -> str:
    headers = bearer(login(client, user)["access_token"])
    response = client.post(
        KEYS,
        headers=headers,
        json={
            "name": "k",
            "scopes": scopes or ["admin"],
            "current_password": TEST_PASSWORD,
            **body,
        },
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["key"])


def _row(db_session: Session, key: str) -> ApiKey:
    db_session.expire_all()
    row = db_session.query(ApiKey).filter_by(prefix=key.split("_")[1]).one()
    return row


def _refused_key(response: object) -> None:
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert error_code(response) == "invalid_api_key"
    assert response.headers["WWW-Authenticate"] == "Bearer"  # type: ignore[attr-defined]
    message = response.get_json()["error"]["message"]  # type: ignore[attr-defined]
    assert message == "The API key is invalid, expired or revoked."


# --- the bearer header ---------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Token abc", "omx_abc"])
def test_no_bearer_token_is_anonymous(client: FlaskClient, header: str | None) -> None:
    response = client.get(PROFILE, headers={} if header is None else {"Authorization": header})
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "bearer    "])
def test_an_empty_bearer_token_is_refused(client: FlaskClient, header: str) -> None:
    response = client.get(PROFILE, headers={"Authorization": header})
    assert response.status_code == 401


@pytest.mark.parametrize("scheme", ["Basic", "Token", "ApiKey"])
def test_a_key_counts_only_as_a_bearer_token(client: FlaskClient, scheme: str) -> None:
    key = _key(client, make_user())
    response = client.get(PROFILE, headers={"Authorization": f"{scheme} {key}"})
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"


def test_spaces_around_the_token_do_not_matter(client: FlaskClient) -> None:
    user = make_user()
    token = login(client, user)["access_token"]
    key = _key(client, user)
    for credential in (token, key):
        response = client.get(PROFILE, headers={"Authorization": f"BEARER   {credential}  "})
        assert response.status_code == 200


# --- API keys ------------------------------------------------------------------------------


def test_a_key_resolves_to_its_owner_narrowed_by_its_scopes(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    user = make_user(Role.OPERATOR)
    key = _key(client, user, scopes=["read"])
    row = _row(db_session, key)
    with app.test_request_context(headers=bearer(key)):
        principal = authenticated()
        assert principal == Principal(
            user.id,
            Role.OPERATOR,
            permissions_for(Role.OPERATOR, ["read"]),
            api_key_id=row.id,
        )
        assert (principal.family_id, principal.token_expires_at) == (None, None)
        assert principal.user.id == user.id
        assert g.audit_user_id == str(user.id)
        assert current_principal() is principal  # once per request


def test_a_key_has_no_login_to_end(client: FlaskClient) -> None:
    key = _key(client, make_user())
    response = client.post("/api/v1/users/logout", headers=bearer(key))
    assert response.status_code == 400
    assert error_code(response) == "not_a_session"


def test_a_principal_cannot_be_changed_once_resolved(app: Flask, client: FlaskClient) -> None:
    """Principals are cached and shared between requests: none may alter one."""
    user = make_user()
    key = _key(client, user)
    with app.test_request_context(headers=bearer(key)):
        principal = authenticated()
        grant = principal_module._load_api_key(key)
    with pytest.raises(FrozenInstanceError):
        principal.role = Role.ADMIN  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        grant.expires_at = None  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        Account(user.id, Role.USER).role = Role.ADMIN  # type: ignore[misc]


@pytest.mark.parametrize("change", [{"is_active": False}, {"deleted_at": datetime.now(UTC)}, None])
def test_the_account_behind_a_resolved_principal_must_still_be_usable(
    app: Flask, db_session: Session, change: dict[str, object] | None
) -> None:
    """A principal taken from the cache may outlive its account's right to sign in."""
    user = make_user()
    principal = Principal(user.id, Role.USER, permissions_for(Role.USER))
    if change is None:
        db_session.delete(user)
    else:
        for name, value in change.items():
            setattr(user, name, value)
    db_session.flush()
    with app.test_request_context(), pytest.raises(Unauthorized) as refused:
        principal.user  # noqa: B018
    assert refused.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    "change",
    [{"is_active": False}, {"deleted_at": datetime.now(UTC)}],
    ids=["disabled", "erased"],
)
def test_a_key_of_an_account_that_may_not_sign_in_is_refused(
    client: FlaskClient, db_session: Session, change: dict[str, object]
) -> None:
    user = make_user()
    key = _key(client, user)
    for name, value in change.items():
        setattr(user, name, value)
    db_session.flush()
    # The job list reads only the caller's id: the key's own checks must refuse it.
    _refused_key(client.get("/api/v1/inference/requests", headers=bearer(key)))
    _refused_key(client.get(PROFILE, headers=bearer(key)))


def test_a_key_expires_on_the_second(
    client: FlaskClient, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _key(client, make_user(), expires_in_days=1)
    row = _row(db_session, key)
    expires_at = row.expires_at
    assert expires_at is not None
    monkeypatch.setattr(principal_module, "utcnow", lambda: expires_at - timedelta(seconds=1))
    assert client.get(PROFILE, headers=bearer(key)).status_code == 200
    monkeypatch.setattr(principal_module, "utcnow", lambda: expires_at)
    _refused_key(client.get(PROFILE, headers=bearer(key)))


def test_a_cached_key_is_checked_for_expiry_on_every_use(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    monkeypatch: pytest.MonkeyPatch,
    cache_listening: None,
) -> None:
    key = _key(client, make_user(), expires_in_days=1)
    expires_at = _row(db_session, key).expires_at
    assert expires_at is not None
    assert client.get(PROFILE, headers=bearer(key)).status_code == 200
    assert _cached(app, "apikey")
    monkeypatch.setattr(principal_module, "utcnow", lambda: expires_at)
    _refused_key(client.get(PROFILE, headers=bearer(key)))


def test_a_key_without_expiry_does_not_expire(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, cache_listening: None
) -> None:
    key = _key(client, make_user())
    far = datetime(2999, 1, 1, tzinfo=UTC)
    assert client.get(PROFILE, headers=bearer(key)).status_code == 200
    assert _cached(app, "apikey")
    monkeypatch.setattr(principal_module, "utcnow", lambda: far)
    assert client.get(PROFILE, headers=bearer(key)).status_code == 200  # cached
    app.extensions["principal_cache"].entries.clear()
    assert client.get(PROFILE, headers=bearer(key)).status_code == 200  # loaded


def test_last_use_is_written_at_most_once_a_minute(
    app: Flask, client: FlaskClient, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _key(client, make_user())
    assert _row(db_session, key).last_used_at is None
    assert client.get(PROFILE, headers=bearer(key)).status_code == 200
    used = _row(db_session, key).last_used_at
    assert used is not None

    def call_at(moment: datetime) -> datetime | None:
        app.extensions["principal_cache"].entries.clear()  # a cache miss: the row is read
        monkeypatch.setattr(principal_module, "utcnow", lambda: moment)
        assert client.get(PROFILE, headers=bearer(key)).status_code == 200
        return _row(db_session, key).last_used_at

    assert call_at(used + timedelta(minutes=1)) == used  # a minute: not yet
    later = used + timedelta(minutes=1, microseconds=1)
    assert call_at(later) == later


def test_a_busy_caller_is_resolved_once_per_cache_period(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, cache_listening: None
) -> None:
    user = make_user()
    key, token = _key(client, user), login(client, user)["access_token"]
    loads: list[str] = []
    load_key, verify = principal_module._load_api_key, principal_module.verify_jwt_in_request

    def counted_load(credential: str) -> object:
        loads.append("key")
        return load_key(credential)

    def counted_verify(*args: object, **kwargs: object) -> object:
        loads.append("jwt")
        return verify(*args, **kwargs)

    monkeypatch.setattr(principal_module, "_load_api_key", counted_load)
    monkeypatch.setattr(principal_module, "verify_jwt_in_request", counted_verify)
    for _ in range(3):
        assert client.get(PROFILE, headers=bearer(key)).status_code == 200
        assert client.get(PROFILE, headers=bearer(token)).status_code == 200
    assert sorted(loads) == ["jwt", "key"]


def test_a_cached_key_loses_what_its_owner_loses(
    app: Flask, client: FlaskClient, cache_listening: None
) -> None:
    user = make_user(Role.OPERATOR)
    key = _key(client, user)
    stats = "/api/v1/system/stats"
    assert client.get(stats, headers=bearer(key)).status_code == 200
    assert _cached(app, "apikey")
    admin = bearer(login(client, make_user(Role.ADMIN))["access_token"])
    assert client.put(f"{USERS}/{user.id}", headers=admin, json={"role": "user"}).status_code == 200
    assert client.get(stats, headers=bearer(key)).status_code == 403


def test_a_cached_key_is_forgotten_when_its_owner_is_disabled(
    app: Flask, client: FlaskClient, cache_listening: None
) -> None:
    user = make_user()
    key = _key(client, user)
    assert client.get(PROFILE, headers=bearer(key)).status_code == 200
    assert _cached(app, "apikey")
    admin = bearer(login(client, make_user(Role.ADMIN))["access_token"])
    disabled = client.put(f"{USERS}/{user.id}", headers=admin, json={"is_active": False})
    assert disabled.status_code == 200, disabled.get_json()
    _refused_key(client.get(PROFILE, headers=bearer(key)))


def test_a_cached_key_is_forgotten_when_revoked(
    app: Flask, client: FlaskClient, db_session: Session, cache_listening: None
) -> None:
    user = make_user()
    key = _key(client, user)
    headers = bearer(login(client, user)["access_token"])
    assert client.get(PROFILE, headers=bearer(key)).status_code == 200
    assert _cached(app, "apikey")
    key_id = _row(db_session, key).id
    assert client.delete(f"{KEYS}/{key_id}", headers=headers).status_code == 204
    _refused_key(client.get(PROFILE, headers=bearer(key)))


# --- JWTs ----------------------------------------------------------------------------------


def test_a_jwt_resolves_to_its_account_and_login(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    user = make_user(Role.ADMIN)
    token = login(client, user)["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    with app.test_request_context(headers=bearer(token)):
        principal = authenticated()
    assert principal == Principal(
        user.id,
        Role.ADMIN,
        permissions_for(Role.ADMIN),
        family_id=uuid.UUID(claims["fam"]),
        token_expires_at=float(claims["exp"]),
    )
    assert principal.api_key_id is None


def test_a_cached_jwt_expires_on_the_second(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, cache_listening: None
) -> None:
    token = login(client, make_user())["access_token"]
    expires_at = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    assert client.get(PROFILE, headers=bearer(token)).status_code == 200
    assert _cached(app, "jwt")
    monkeypatch.setattr(principal_module, "time", SimpleNamespace(time=lambda: expires_at - 1))
    assert client.get(PROFILE, headers=bearer(token)).status_code == 200
    monkeypatch.setattr(principal_module, "time", SimpleNamespace(time=lambda: expires_at))
    response = client.get(PROFILE, headers=bearer(token))
    assert response.status_code == 401
    assert error_code(response) == "token_expired"
    assert response.get_json()["error"]["message"] == "The token has expired."
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_cached_jwt_is_forgotten_at_logout(
    app: Flask, client: FlaskClient, cache_listening: None
) -> None:
    user = make_user()
    headers = bearer(login(client, user)["access_token"])
    assert client.get(PROFILE, headers=headers).status_code == 200
    assert _cached(app, "jwt")
    assert client.post("/api/v1/users/logout", headers=headers).status_code == 204
    assert client.get(PROFILE, headers=headers).status_code == 401


def test_a_cached_jwt_is_forgotten_when_its_account_changes_role(
    app: Flask, client: FlaskClient, cache_listening: None
) -> None:
    user = make_user(Role.OPERATOR)
    headers = bearer(login(client, user)["access_token"])
    assert client.get("/api/v1/system/stats", headers=headers).status_code == 200
    assert _cached(app, "jwt")
    admin = bearer(login(client, make_user(Role.ADMIN))["access_token"])
    assert client.put(f"{USERS}/{user.id}", headers=admin, json={"role": "user"}).status_code == 200
    assert client.get("/api/v1/system/stats", headers=headers).status_code == 403


# --- guards --------------------------------------------------------------------------------


def test_require_answers_401_then_403_then_the_view(app: Flask, client: FlaskClient) -> None:
    @require(Permission.FLEET_WRITE)
    def view() -> str:
        return "ran"

    assert view.required_permission == Permission.FLEET_WRITE  # type: ignore[attr-defined]
    assert view.__name__ == "view"
    operator = bearer(login(client, make_user(Role.OPERATOR))["access_token"])
    user = bearer(login(client, make_user())["access_token"])
    with app.test_request_context():
        with pytest.raises(Unauthorized) as anonymous:
            view()
        assert anonymous.value.headers == {"WWW-Authenticate": "Bearer"}
    with app.test_request_context(headers=user), pytest.raises(Forbidden):
        view()
    with app.test_request_context(headers=operator):
        assert view() == "ran"


def test_the_principal_is_resolved_once_per_request(app: Flask, client: FlaskClient) -> None:
    token = login(client, make_user())["access_token"]
    with app.test_request_context(headers=bearer(token)):
        g.principal = None  # resolved already (anonymous): not resolved again
        assert current_principal() is None


def test_the_actor_of_a_key_is_recorded_by_the_audit_trigger(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    """Resolving a key opens the request's session before the caller is known: the audit
    context must then be set on that session."""
    admin = make_user(Role.ADMIN)
    key = _key(client, admin)
    node = NodeFactory()
    app.extensions["principal_cache"].entries.clear()  # the key is read from the database
    response = client.put(f"/api/v1/nodes/{node.id}", headers=bearer(key), json={"slots": 3})
    assert response.status_code == 200, response.get_json()
    entry = db_session.scalar(
        select(AuditLogEntry)
        .where(AuditLogEntry.action == "nodes.update", AuditLogEntry.resource_id == str(node.id))
        .order_by(AuditLogEntry.id.desc())
    )
    assert entry is not None
    assert entry.user_id == admin.id


def test_anonymous_is_none_not_an_error(app: Flask) -> None:
    with app.test_request_context():
        assert current_principal() is None
        assert "audit_user_id" not in g
