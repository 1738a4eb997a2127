"""PostgreSQL stopped under a running web process, and started again (docs/operations.md,
"Faults"): real gunicorn with gevent workers, a throwaway PostgreSQL of the test's own
(tests/support/throwaway.py), the shared Redis.

While PostgreSQL is down every route answers 503 `database_unavailable` with Retry-After
within a second, in its protocol's shape: the REST API (an authenticated read, a submission,
a login), the Ollama and OpenAI doors, a WebSocket handshake; readiness names postgres;
streams opened before the outage go on. Once it is back, every route answers again within
5 s, with no restart of the web process: after a long outage (requests failed meanwhile) and
after a short one that no request saw (the pool's connections are all dead then).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import websocket
from redis import Redis
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from db.session import Database
from tests.conftest import LiveServer, make_committed_user, start_live_server, stop_live_server
from tests.factories import TEST_PASSWORD
from tests.support.identity import bearer
from tests.support.throwaway import ThrowawayPostgres, ThrowawayRedis
from tests.support.ws import Received, connect, next_frame
from workers.events import EventLog

MODEL = "outage:latest"
DOWN_WITHIN_S = 1.0
BACK_WITHIN_S = 5.0
HEARTBEAT_S = 0.5  # the doors ask the database about a quiet job every one to two of these


@dataclass(frozen=True)
class Caller:
    jwt: dict[str, str]
    key: dict[str, str]
    username: str


@dataclass(frozen=True)
class Route:
    """One call, and what it answers with PostgreSQL up."""

    name: str
    method: str
    path: str
    credential: str | None  # "jwt", "key" or none
    body: dict[str, Any] | None = None
    up: int = 200
    shape: str = "api"  # api | ollama | openai | ready

    def call(self, server: LiveServer, caller: Caller) -> requests.Response:
        headers = {"jwt": caller.jwt, "key": caller.key, None: {}}[self.credential]
        body = self.body
        if self.path == "/api/v1/auth/login":
            body = {"username": caller.username, "password": TEST_PASSWORD}
        # A streamed answer counts once its headers are in; closing it leaves its job queued.
        with requests.request(
            self.method,
            f"{server.url}{self.path}",
            json=body,
            headers=headers,
            timeout=5,
            stream=True,
        ) as response:
            if not response.headers.get("Content-Type", "").startswith(STREAMED):
                assert response.content is not None  # read the whole answer
            return response


STREAMED = ("application/x-ndjson", "text/event-stream")
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
ROUTES = [
    Route("REST read", "GET", "/api/v1/inference/requests", "jwt"),
    Route(
        "REST submit",
        "POST",
        "/api/v1/inference/generate",
        "key",
        {"model": MODEL, "prompt": "hi"},
        up=202,
    ),
    Route("login", "POST", "/api/v1/auth/login", None),
    Route(
        "Ollama generate",
        "POST",
        "/api/generate",
        "key",
        {"model": MODEL, "prompt": "hi"},
        shape="ollama",
    ),
    Route("Ollama chat", "POST", "/api/chat", "jwt", CHAT, shape="ollama"),
    Route("Ollama tags", "GET", "/api/tags", "key", shape="ollama"),
    Route(
        "OpenAI chat",
        "POST",
        "/v1/chat/completions",
        "key",
        {**CHAT, "stream": True},
        shape="openai",
    ),
    Route("OpenAI models", "GET", "/v1/models", "jwt", shape="openai"),
    Route("readiness", "GET", "/health/ready", None, shape="ready"),
]


def assert_database_unavailable(route: Route, response: requests.Response) -> None:
    assert response.status_code == 503, (route.name, response.text)
    body = response.json()
    if route.shape == "ready":  # a probe: it names what failed, and is asked again anyway
        assert body["checks"]["postgres"]["ok"] is False, body
        assert body["error"]["details"]["failed"] == ["postgres"]
        return
    assert int(response.headers.get("Retry-After", 0)) >= 1, (route.name, response.text)
    if route.shape == "api":
        assert body["error"]["code"] == "database_unavailable", (route.name, body)
        assert body["error"]["details"]["request_id"] == response.headers["X-Request-ID"]
    elif route.shape == "ollama":
        assert set(body) == {"error"}, (route.name, body)
        assert "database is unavailable" in body["error"]
    else:
        assert body["error"]["code"] == "database_unavailable", (route.name, body)
        assert body["error"]["type"] == "server_error"


# --- the stack --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture(scope="module")
def web(
    postgres: ThrowawayPostgres,
    settings_overrides: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    url = postgres.migrated("ollamamax")
    server = start_live_server(
        {**settings_overrides, "database_url": url},
        tmp_path_factory.mktemp("outage"),
        QUEUE_WHILE_UNAVAILABLE="true",  # no worker: submissions are accepted and stay queued
        PRINCIPAL_CACHE_S="0",  # every call resolves its caller in the database, before any view
        WS_HEARTBEAT_S=str(HEARTBEAT_S),
    )
    yield server
    server.process.send_signal(signal.SIGINT)  # quick: open streams are not waited for
    stop_live_server(server)


@pytest.fixture
def caller(web: LiveServer, postgres: ThrowawayPostgres, redis_client: Redis) -> Caller:
    engine = create_engine(postgres.url("ollamamax"))
    user = make_committed_user(Database(engine, sessionmaker(engine, expire_on_commit=False)))
    engine.dispose()
    login = requests.post(
        f"{web.url}/api/v1/auth/login",
        json={"username": user.username, "password": TEST_PASSWORD},
        timeout=10,
    )
    jwt = bearer(login.json()["access_token"])
    made = requests.post(
        f"{web.url}/api/v1/users/api-keys",
        json={"current_password": TEST_PASSWORD, "name": "outage", "scopes": ["inference"]},
        headers=jwt,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    return Caller(jwt, bearer(made.json()["key"]), user.username)


# --- the scenario -----------------------------------------------------------------------


def test_postgres_down_is_503_at_once_and_comes_back_by_itself(
    web: LiveServer, postgres: ThrowawayPostgres, caller: Caller, redis_client: Redis
) -> None:
    events = EventLog(redis_client, ttl_s=60)
    for route in ROUTES:
        assert route.call(web, caller).status_code == route.up, route.name
    streams = OpenStreams(web, caller)  # opened now, followed through the outage

    postgres.stop()
    took: dict[str, float] = {}
    for route in ROUTES:
        started = time.monotonic()
        response = route.call(web, caller)
        took[route.name] = round(time.monotonic() - started, 3)
        assert_database_unavailable(route, response)
    took["WebSocket handshake"] = assert_socket_refused(web, caller)
    print(f"\n503 answered in (s): {took}")  # read with -s
    assert max(took.values()) < DOWN_WITHIN_S, took
    assert requests.get(f"{web.url}/health", timeout=5).status_code == 200  # still alive
    time.sleep(4 * HEARTBEAT_S)  # the open streams ask the database, and are not ended by it

    postgres.start()
    back = time_to_recovery(web, caller)
    print(f"back after an outage, in (s): {back}")
    assert max(back.values()) < BACK_WITHIN_S, back
    streams.finish(events)

    # A blip no request saw: every pooled connection is dead, and still nothing needs a restart.
    postgres.stop()
    postgres.start()
    back = time_to_recovery(web, caller)
    print(f"back after a blip, in (s): {back}")
    assert max(back.values()) < BACK_WITHIN_S, back


def time_to_recovery(web: LiveServer, caller: Caller) -> dict[str, float]:
    """Seconds until each route answered as it does with PostgreSQL up, from now on; each
    answer meanwhile is the outage's 503, never anything else."""
    started = time.monotonic()
    waiting = {route.name: route for route in ROUTES}
    back: dict[str, float] = {}
    while waiting and time.monotonic() - started < 2 * BACK_WITHIN_S:
        for name, route in list(waiting.items()):
            response = route.call(web, caller)
            if response.status_code == route.up:
                back[name] = round(time.monotonic() - started, 2)
                del waiting[name]
            else:
                assert_database_unavailable(route, response)
        time.sleep(0.05)
    assert not waiting, f"not back within {2 * BACK_WITHIN_S} s: {sorted(waiting)}"
    return back


def assert_socket_refused(web: LiveServer, caller: Caller) -> float:
    """A WebSocket handshake is refused with the same 503 (the caller is resolved before the
    upgrade); how long that took."""
    started = time.monotonic()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(web.url, f"/ws/inference/{uuid.uuid4()}", header_token=_token(caller.jwt))
    assert refused.value.status_code == 503
    assert b"database_unavailable" in (refused.value.resp_body or b"")
    return round(time.monotonic() - started, 3)


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


class OpenStreams:
    """An Ollama stream, an OpenAI stream and a WebSocket on queued jobs, opened before the
    outage: each must come through it and end as its job does once that is finished."""

    def __init__(self, web: LiveServer, caller: Caller) -> None:
        self.doors = [
            self._open(web, "/api/generate", {"model": MODEL, "prompt": "hi"}, caller.key),
            self._open(
                web, "/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True}, caller.key
            ),
        ]
        job = self.doors[0][0]
        self.socket = connect(web.url, f"/ws/inference/{job}", header_token=_token(caller.jwt))
        # Admitted (its checks read the database) once the stored "queued" comes.
        queued = _frames_until(self.socket, lambda frame: frame.get("status") == "queued")
        assert queued.close_code is None, (queued.close_code, queued.close_reason)

    @staticmethod
    def _open(
        web: LiveServer, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[uuid.UUID, requests.Response]:
        response = requests.post(
            f"{web.url}{path}", json=body, headers=headers, stream=True, timeout=10
        )
        assert response.status_code == 200, response.text
        return uuid.UUID(response.headers["X-OllamaMax-Request-ID"]), response

    def finish(self, events: EventLog) -> None:
        for job, _ in self.doors:
            finish_like_a_worker(events, job)
        for job, response in self.doors:
            text = response.content.decode()  # to the end of the stream
            assert "Hello" in text, (job, text)
            assert "error" not in text, (job, text)
        received = _frames_until(self.socket, lambda frame: frame.get("status") == "completed")
        assert received.text == "Hello", (received.close_code, received.close_reason)
        self.socket.close()


def _frames_until(socket: websocket.WebSocket, last: Callable[[dict[str, Any]], bool]) -> Received:
    received = Received()
    while (frame := next_frame(socket, received)) is not None:
        if frame.get("type") == "heartbeat":
            continue
        received.frames.append(frame)
        if last(frame):
            break
    return received


def finish_like_a_worker(events: EventLog, job: uuid.UUID) -> None:
    events.publish(job, "status", status="running", attempt=1)
    events.publish(job, "token", text="Hello", attempt=1)
    events.publish(job, "done", done_reason="stop", eval_count=1)
    events.publish(job, "status", status="completed", attempt=1)


# --- the helper itself ------------------------------------------------------------------


def test_a_throwaway_redis_keeps_what_it_was_given_across_a_restart() -> None:
    with ThrowawayRedis() as server:
        with server.client() as client:
            client.set("kept", "yes")
        port = server.port
        server.stop()
        assert not server.running
        server.start()
        assert server.port == port
        with server.client() as client:
            assert client.get("kept") == b"yes"
