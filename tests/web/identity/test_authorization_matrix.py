"""Every route of the app x every kind of caller, with the answer each must get; and every
front-door route x every kind of bad credential, answered in the door's own shape.

The table is checked against the app's URL map: a new route that is not listed here fails
the suite until someone decides who may call it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from config.settings import DEV_JWT_SECRET_KEY
from db.models import ModelStatus, Role
from tests.factories import TEST_PASSWORD, InferenceRequestFactory, ModelReplicaFactory
from tests.support.identity import bearer, login, make_user
from tests.web.identity.matrix_compat import COMPAT_MATRIX
from tests.web.identity.matrix_door_models import DOOR_MODELS_MATRIX
from tests.web.identity.matrix_fleet import FLEET_MATRIX
from tests.web.identity.matrix_system import SYSTEM_MATRIX
from web.openapi.views import ASSETS

CALLERS = ("anonymous", "owner", "other", "operator", "admin")
OK = "ok"  # allowed: any 2xx, or 422/400 for the body these probes send
# Shorthands for the common rows.
PUBLIC = dict.fromkeys(CALLERS, OK)
SIGNED_IN = {"anonymous": 401, "owner": OK, "other": OK, "operator": OK, "admin": OK}
OWNER_ONLY = {"anonymous": 401, "owner": OK, "other": 404, "operator": 404, "admin": 404}
ADMIN_ONLY = {"anonymous": 401, "owner": 403, "other": 403, "operator": 403, "admin": OK}
OWNER_OR_STAFF = {"anonymous": 401, "owner": OK, "other": 404, "operator": OK, "admin": OK}

DOCS_ASSET = "/docs/assets/<any(" + ", ".join(map(repr, ASSETS)) + "):name>"
DIGEST = "sha256:" + "0" * 64

MATRIX: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/health/ready"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", DOCS_ASSET): PUBLIC,
    ("POST", "/api/v1/auth/register"): PUBLIC,
    ("POST", "/api/v1/auth/login"): PUBLIC,
    # Only a refresh token opens it; these callers present access tokens (or nothing).
    ("POST", "/api/v1/auth/refresh"): dict.fromkeys(CALLERS, 401),
    ("POST", "/api/v1/users/logout"): SIGNED_IN,
    ("GET", "/api/v1/users/sessions"): SIGNED_IN,
    ("DELETE", "/api/v1/users/sessions/<uuid:session_id>"): OWNER_ONLY,
    ("GET", "/api/v1/users/profile"): SIGNED_IN,
    ("PUT", "/api/v1/users/profile"): SIGNED_IN,
    ("POST", "/api/v1/users/api-keys"): SIGNED_IN,
    ("GET", "/api/v1/users/api-keys"): SIGNED_IN,
    ("DELETE", "/api/v1/users/api-keys/<uuid:key_id>"): OWNER_ONLY,
    ("GET", "/api/v1/users/me/export"): SIGNED_IN,
    ("DELETE", "/api/v1/users/me"): SIGNED_IN,
    ("GET", "/api/v1/users"): ADMIN_ONLY,
    ("PUT", "/api/v1/users/<uuid:user_id>"): ADMIN_ONLY,
    ("DELETE", "/api/v1/users/<uuid:user_id>"): ADMIN_ONLY,
    ("GET", "/api/v1/users/me/usage"): SIGNED_IN,
    ("GET", "/api/v1/users/<uuid:user_id>/usage"): ADMIN_ONLY,
    ("PUT", "/api/v1/users/<uuid:user_id>/quotas"): ADMIN_ONLY,
    ("POST", "/api/v1/inference/generate"): SIGNED_IN,
    ("POST", "/api/v1/inference/chat"): SIGNED_IN,
    ("POST", "/api/v1/inference/embed"): SIGNED_IN,
    ("GET", "/api/v1/inference/requests"): SIGNED_IN,
    ("GET", "/api/v1/inference/requests/<uuid:request_id>"): OWNER_OR_STAFF,
    ("POST", "/api/v1/inference/requests/<uuid:request_id>/cancel"): OWNER_OR_STAFF,
    ("GET", "/api/v1/inference/requests/<uuid:request_id>/webhook"): OWNER_OR_STAFF,
    # Allowed, but this job has no webhook delivery to make again.
    ("POST", "/api/v1/inference/requests/<uuid:request_id>/webhook/redeliver"): {
        **OWNER_OR_STAFF,
        "owner": 409,
        "operator": 409,
        "admin": 409,
    },
    ("GET", "/api/v1/users/webhook-secret"): SIGNED_IN,
    ("POST", "/api/v1/users/webhook-secret"): SIGNED_IN,
    ("PATCH", "/api/v1/users/api-keys/<uuid:key_id>"): OWNER_ONLY,
    **FLEET_MATRIX,
    **SYSTEM_MATRIX,
    **COMPAT_MATRIX,
    **DOOR_MODELS_MATRIX,
}

# WebSocket routes: the test client cannot open them, so tests/pipeline/test_relay_streams.py
# and test_relay_topics.py check every caller against these rows over real sockets (a
# refusal there is an error frame and close code 1008 carrying the same code).
SOCKETS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/ws/inference/<uuid:request_id>"): OWNER_OR_STAFF,
    ("GET", "/ws"): SIGNED_IN,
}


def _routes(app: Flask, *, websocket: bool) -> set[tuple[str, str]]:
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and rule.websocket == websocket
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }


def test_every_route_is_in_the_matrix(base_app: Flask) -> None:
    assert _routes(base_app, websocket=False) == set(MATRIX)
    assert _routes(base_app, websocket=True) == set(SOCKETS)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "rule"), sorted(MATRIX))
def test_route_answers_each_caller_as_the_policy_says(
    client: FlaskClient, method: str, rule: str, caller: str
) -> None:
    owner = make_user()
    owner_tokens = login(client, owner)
    owner_headers = bearer(owner_tokens["access_token"])
    key = client.post(
        "/api/v1/users/api-keys",
        headers=owner_headers,
        json={"name": "k", "scopes": ["read"], "current_password": TEST_PASSWORD},
    ).get_json()
    family = client.get("/api/v1/users/sessions", headers=owner_headers).get_json()["items"][0]
    job = InferenceRequestFactory(user_id=owner.id)
    replica = ModelReplicaFactory(model__status=ModelStatus.AVAILABLE)
    url = (
        rule.replace("<uuid:session_id>", family["id"])
        .replace("<uuid:model_id>", str(replica.model_id))
        .replace("<uuid:node_id>", str(replica.node_id))
        .replace("<uuid:request_id>", str(job.id))
        .replace("<uuid:key_id>", key["id"])
        .replace("<uuid:user_id>", str(owner.id))
        .replace("<path:name>", replica.model.name)
        .replace("<digest>", DIGEST)
        .replace(DOCS_ASSET.removeprefix("/docs/assets/"), "docs.js")
    )
    callers = {
        "owner": owner_headers,
        "other": lambda: bearer(login(client, make_user())["access_token"]),
        "operator": lambda: bearer(login(client, make_user(Role.OPERATOR))["access_token"]),
        # A second admin, so "last admin" protections do not decide the answer.
        "admin": lambda: (
            make_user(Role.ADMIN),
            bearer(login(client, make_user(Role.ADMIN))["access_token"]),
        )[1],
    }
    headers: dict[str, str] = {}
    if caller != "anonymous":
        chosen = callers[caller]
        headers = chosen() if callable(chosen) else chosen

    body = {} if method in ("POST", "PUT", "PATCH", "DELETE") else None
    response = client.open(url, method=method, headers=headers, json=body)

    expected = MATRIX[(method, rule)][caller]
    if expected == OK:
        assert response.status_code < 300 or response.status_code in (400, 422), (
            response.status_code,
            response.get_json(),
        )
    else:
        assert response.status_code == expected, response.get_json()


# --- bad credentials on the front doors -------------------------------------------------

DOOR_ROUTES = sorted(
    (method, rule)
    for method, rule in {**COMPAT_MATRIX, **DOOR_MODELS_MATRIX}
    if rule == "/" or rule.startswith(("/api/", "/v1/"))
)
# Each kind of bad credential, and what the answer's message says (as on the native API).
BAD_CREDENTIALS = {
    "missing": "Authentication is required",
    "malformed": "The token is not valid",  # neither an API key nor a JWT
    "expired": "The token has expired",
    "revoked": "The token has been revoked",  # its login was logged out
    "foreign": "The token is not valid",  # a JWT signed with someone else's key
    "wrong_key": "The API key is invalid",  # shaped like an API key, but no such key
    "refresh": "The token is not valid",  # a refresh token where an access token belongs
}
FOREIGN_KEY = "an-attacker-chosen-key-of-32-bytes!"


def _forged(claims: dict[str, Any], key: str, **times: timedelta) -> str:
    now = datetime.now(UTC)
    payload = {
        **claims,
        "iat": now - timedelta(minutes=20),
        "nbf": now - timedelta(minutes=20),
        "exp": now + times.get("expires_in", timedelta(minutes=5)),
    }
    return jwt.encode(payload, key, algorithm="HS256")


def _bad_credential(client: FlaskClient, kind: str) -> dict[str, str]:
    if kind == "missing":
        return {}
    if kind == "malformed":
        return bearer("wrong")
    if kind == "wrong_key":
        return bearer("omx_0123456789_" + "x" * 43)
    tokens = login(client, make_user())
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    if kind == "expired":
        return bearer(_forged(claims, DEV_JWT_SECRET_KEY, expires_in=timedelta(seconds=-5)))
    if kind == "foreign":
        return bearer(_forged(claims, FOREIGN_KEY))
    if kind == "refresh":
        return bearer(tokens["refresh_token"])
    assert kind == "revoked"
    headers = bearer(tokens["access_token"])
    assert client.post("/api/v1/users/logout", headers=headers).status_code == 204
    return headers


def test_the_door_routes_are_the_doors_rows() -> None:
    assert len(DOOR_ROUTES) == len(COMPAT_MATRIX) + len(DOOR_MODELS_MATRIX) - 1  # /metrics


@pytest.mark.parametrize("credential", sorted(BAD_CREDENTIALS))
@pytest.mark.parametrize(("method", "rule"), DOOR_ROUTES)
def test_a_bad_credential_on_a_door_is_a_401_in_the_doors_shape(
    client: FlaskClient, method: str, rule: str, credential: str
) -> None:
    """Never a 500, never another protocol's error: what the native API answers 401
    (web/security/tokens.py), each door answers 401 as its clients expect. A public route
    (Ollama's liveness and version) ignores the credential, as Ollama does."""
    headers = _bad_credential(client, credential)
    url = rule.replace("<path:name>", "llama3.2:latest").replace("<digest>", DIGEST)
    body = {} if method in ("POST", "DELETE") else None

    response = client.open(url, method=method, headers=headers, json=body)

    if MATRIX[(method, rule)]["anonymous"] == OK:
        assert response.status_code == 200, response.get_data(as_text=True)
        return
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error = response.get_json()["error"]
    if rule.startswith("/v1/"):  # OpenAI's error object
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
        message = error["message"]
    else:  # Ollama's
        assert set(response.get_json()) == {"error"}
        message = error
    assert BAD_CREDENTIALS[credential] in message
