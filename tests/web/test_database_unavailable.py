"""PostgreSQL away, in-process: every route answers 503 `database_unavailable` with
Retry-After, in its protocol's shape, at once, whether the failure comes while resolving the
caller (before any view), in a view or at the commit; never a 500. The same over a real
gunicorn and a real PostgreSQL stopped and started again: tests/faults/test_database_outage.py.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from tests.conftest import start_live_server, stop_live_server
from tests.support.identity import bearer
from web import create_app
from web.compat import jobs
from web.errors import RETRY_AFTER_S, render_error

REFUSING_DATABASE = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
API_KEY = "omx_0123456789_" + "a" * 43  # well-formed: its row must be read
SUBMIT = {"model": "m", "prompt": "hi"}


@pytest.fixture
def no_database(settings_overrides: dict[str, Any], redis_client: Any) -> Flask:
    """The app with PostgreSQL refusing connections (Redis is up)."""
    return create_app({**settings_overrides, "database_url": REFUSING_DATABASE})


@pytest.fixture
def api(no_database: Flask) -> FlaskClient:
    return no_database.test_client()


@pytest.fixture
def jwt_headers(no_database: Flask) -> dict[str, str]:
    with no_database.app_context():
        token = create_access_token(
            identity=str(uuid.uuid4()), additional_claims={"fam": str(uuid.uuid4())}
        )
    return bearer(token)


def _timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _assert_retry_after(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    if response.request.path == "/api/v1/auth/login":
        # flask-limiter's strict login limit puts the later of its window's reset and ours.
        assert int(response.headers["Retry-After"]) >= RETRY_AFTER_S
    else:
        assert response.headers["Retry-After"] == str(RETRY_AFTER_S)


@pytest.mark.parametrize(
    ("method", "path", "body", "credential"),
    [
        ("get", "/api/v1/inference/requests", None, "key"),
        ("post", "/api/v1/inference/generate", SUBMIT, "key"),
        ("get", "/api/v1/users/profile", None, "jwt"),
        ("post", "/api/v1/auth/login", {"username": "u", "password": "p"}, None),
        ("get", "/api/v1/models/", None, "jwt"),
    ],
)
def test_rest_routes_answer_database_unavailable(
    api: FlaskClient,
    jwt_headers: dict[str, str],
    method: str,
    path: str,
    body: Any,
    credential: str | None,
) -> None:
    headers = {"key": bearer(API_KEY), "jwt": jwt_headers, None: {}}[credential]
    headers = {**headers, "X-Request-ID": "db-down-1"}
    response, elapsed = _timed(lambda: getattr(api, method)(path, json=body, headers=headers))

    _assert_retry_after(response)
    assert response.get_json() == {
        "error": {
            "code": "database_unavailable",
            "message": "The database is unavailable; try again shortly.",
            "details": {"request_id": "db-down-1"},
        }
    }
    assert elapsed < 1.0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/generate", {**SUBMIT, "stream": True}),
        ("post", "/api/chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("get", "/api/tags", None),
        ("get", "/api/version", None),
    ],
)
def test_the_ollama_door_answers_in_its_shape(
    api: FlaskClient, method: str, path: str, body: Any
) -> None:
    response = getattr(api, method)(path, json=body, headers=bearer(API_KEY))

    _assert_retry_after(response)
    assert response.get_json() == {"error": "The database is unavailable; try again shortly."}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/chat/completions", {"model": "m", "messages": [], "stream": True}),
        ("post", "/v1/completions", {"model": "m", "prompt": "hi"}),
        ("get", "/v1/models", None),
    ],
)
def test_the_openai_door_answers_in_its_shape(
    api: FlaskClient, method: str, path: str, body: Any
) -> None:
    response = getattr(api, method)(path, json=body, headers=bearer(API_KEY))

    _assert_retry_after(response)
    assert response.get_json() == {
        "error": {
            "message": "The database is unavailable; try again shortly.",
            "type": "server_error",
            "param": None,
            "code": "database_unavailable",
        }
    }


def test_readiness_names_postgres(api: FlaskClient) -> None:
    response = api.get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["error"]["details"] == {"failed": ["postgres"]}


def _dbapi(kind: type[DBAPIError], **kwargs: Any) -> DBAPIError:
    return kind("SELECT 1", {}, Exception("server closed the connection"), **kwargs)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (_dbapi(OperationalError), 503),  # refused, reset, shutting down, starting up
        (_dbapi(InterfaceError), 503),  # the connection was already closed
        (_dbapi(DBAPIError, connection_invalidated=True), 503),  # died under a statement
        (PoolTimeout("QueuePool limit reached"), 503),
        (_dbapi(ProgrammingError), 500),  # a bug
        (_dbapi(DBAPIError), 500),
    ],
)
def test_which_database_errors_mean_unavailable(
    no_database: Flask, error: Exception, status: int
) -> None:
    with no_database.test_request_context("/"):
        response = render_error(error)
    assert response.status_code == status
    assert ("Retry-After" in response.headers) is (status == 503)


def test_integrity_errors_keep_their_meaning(no_database: Flask) -> None:
    with no_database.test_request_context("/"):
        response = render_error(_dbapi(IntegrityError))
    assert response.status_code == 500  # neither unique nor foreign key: a bug


def test_a_rollback_that_fails_does_not_turn_the_answer_into_a_500(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection died under a view's query: the rollback after the 503 may fail too."""

    def dead(self: Session, *args: Any, **kwargs: Any) -> None:
        raise _dbapi(OperationalError)

    monkeypatch.setattr(Session, "scalars", dead)
    monkeypatch.setattr(Session, "rollback", dead)
    monkeypatch.setattr(Session, "close", dead)
    response = client.get("/api/version")  # the Ollama door reads the nodes' versions

    _assert_retry_after(response)


# --- the doors' streams -----------------------------------------------------------------


@pytest.fixture
def request_context(no_database: Flask) -> Iterator[None]:
    with no_database.test_request_context("/"):
        yield


@pytest.mark.usefixtures("request_context")
def test_a_stream_starts_with_an_empty_item_that_sends_the_headers() -> None:
    stream = jobs.for_the_caller(uuid.uuid4(), iter(["a", "b"]), lambda m: m)
    assert list(stream) == ["", "a", "b"]


@pytest.mark.usefixtures("request_context")
def test_a_caller_leaving_while_the_database_is_away_ends_only_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreachable(_request_id: uuid.UUID) -> None:
        raise _dbapi(OperationalError)

    monkeypatch.setattr(jobs, "abandon", unreachable)
    stream = jobs.for_the_caller(uuid.uuid4(), iter(["a", "b"]), lambda m: m)
    assert next(stream) == ""
    stream.close()  # no exception: the job runs on and its result is kept


@pytest.mark.usefixtures("request_context")
def test_the_stored_state_is_not_asked_for_while_the_database_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreachable(_request_id: uuid.UUID) -> None:
        raise _dbapi(OperationalError)

    monkeypatch.setattr(jobs, "final_state", unreachable)
    assert jobs._stored_end(uuid.uuid4()) is None  # the events go on deciding


@pytest.mark.usefixtures("request_context")
def test_a_whole_answer_that_cannot_be_followed_says_where_the_result_will_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request_id = uuid.uuid4()

    def broken(_request_id: uuid.UUID) -> Iterator[tuple[str, Any]]:
        raise ConnectionError("redis went away")
        yield  # pragma: no cover

    monkeypatch.setattr(jobs, "outcomes", broken)
    with pytest.raises(jobs.JobFailed, match=f"/api/v1/inference/requests/{request_id}"):
        jobs.collect(request_id)


def test_job_headers_name_the_job_and_link_to_it(no_database: Flask) -> None:
    request_id = uuid.uuid4()
    with no_database.test_request_context("/"):
        headers = jobs.job_headers(request_id)
    assert headers == {
        "X-OllamaMax-Request-ID": str(request_id),
        "Link": f'</api/v1/inference/requests/{request_id}>; rel="related"',
    }


# --- a server that takes the connection and never answers ---------------------------------


def test_a_silent_database_fails_the_call_after_the_connect_timeout_under_gevent(
    settings_overrides: dict[str, Any], tmp_path: Any
) -> None:
    """Under gunicorn's gevent workers psycopg2 connects without blocking, and libpq then
    ignores connect_timeout: without db/session.py's own timeout this call would hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
        server = start_live_server(
            {**settings_overrides, "database_url": url, "db_connect_timeout_s": 1}, tmp_path
        )
        try:
            for path in ("/api/v1/inference/requests", "/api/tags"):
                started = time.monotonic()
                response = requests.get(f"{server.url}{path}", headers=bearer(API_KEY), timeout=10)
                elapsed = time.monotonic() - started
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
                # One connect for the caller, and at most one for the run-time config.
                assert elapsed < 2.5, (path, elapsed)
        finally:
            server.process.send_signal(signal.SIGINT)
            stop_live_server(server)
