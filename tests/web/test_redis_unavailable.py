"""Redis away, in-process: an authenticated call cannot check its token's revocation (the
JWT blocklist lives in Redis), so it answers 503 with Retry-After at once, in its protocol's
shape, never a 500 or a hang; and works again once Redis is back, with no restart. A
throwaway Redis of the test's own (tests/support/throwaway.py): the shared one must never
be stopped. What running jobs do meanwhile: tests/pipeline/test_dependency_outages.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from db.session import Database
from tests.conftest import make_committed_user
from tests.factories import TEST_PASSWORD
from tests.support.apps import stop_background
from tests.support.identity import bearer
from tests.support.throwaway import ThrowawayRedis
from web import create_app
from web.errors import RETRY_AFTER_S

ROUTES = [
    ("GET", "/api/v1/users/profile", None),
    ("POST", "/api/v1/inference/generate", {"model": "llama3.2", "prompt": "hi"}),
    ("POST", "/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False}),
    ("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": []}),
]


@pytest.fixture
def redis_server() -> Iterator[ThrowawayRedis]:
    with ThrowawayRedis() as server:
        yield server


@pytest.fixture
def api(
    redis_server: ThrowawayRedis, settings_overrides: dict[str, Any], committed: Database
) -> Iterator[tuple[FlaskClient, dict[str, str]]]:
    app: Flask = create_app({**settings_overrides, "redis_url": redis_server.url})
    client = app.test_client()
    user = make_committed_user(committed)
    login = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": TEST_PASSWORD}
    )
    yield client, bearer(login.get_json()["access_token"])
    stop_background(app)


def _call(client: FlaskClient, headers: dict[str, str], method: str, path: str, body: Any) -> Any:
    return client.open(path, method=method, json=body, headers=headers)


def test_authenticated_calls_answer_503_with_retry_after_while_redis_is_away(
    redis_server: ThrowawayRedis, api: tuple[FlaskClient, dict[str, str]]
) -> None:
    client, headers = api
    redis_server.stop()
    for method, path, body in ROUTES:
        started = time.monotonic()
        response = _call(client, headers, method, path, body)
        assert time.monotonic() - started < 1.0, path
        assert response.status_code == 503, (path, response.get_json())
        assert response.headers["Retry-After"] == str(RETRY_AFTER_S), path
        error = response.get_json()["error"]
        if path.startswith("/api/v1/"):
            assert error["code"] == "service_unavailable"
        elif path.startswith("/api/"):
            assert isinstance(error, str)  # Ollama's shape
        else:
            assert error["type"] == "server_error"  # OpenAI's

    redis_server.start()
    profile = _call(client, headers, "GET", "/api/v1/users/profile", None)
    assert profile.status_code == 200, profile.get_json()
