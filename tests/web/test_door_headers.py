"""The front doors name the job behind their answer (`X-OllamaMax-Request-ID` and a `Link` to
it), and a streamed answer sends them before the job has produced anything: over a real
gunicorn with gevent workers and no worker at all, so the job stays queued and no token
exists. A caller cut off mid-stream can then find its job.

The job's events are published by the test itself (as a worker would) once the headers have
been seen, so each answer also ends as it should.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from redis import Redis

from db.session import Database
from tests.conftest import LiveServer, make_committed_user, start_live_server, stop_live_server
from tests.factories import TEST_PASSWORD
from tests.support.identity import bearer
from workers.events import EventLog

MODEL = "door-headers:latest"
JOB_ID = "X-OllamaMax-Request-ID"
JOB_PATH = "/api/v1/inference/requests/{}"
STREAMED = {
    "/api/generate": {"model": MODEL, "prompt": "hi"},
    "/api/chat": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/chat/completions": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    },
    "/v1/completions": {"model": MODEL, "prompt": "hi", "stream": True},
}


@pytest.fixture(scope="module")
def queueing_server(
    settings_overrides: dict[str, Any],
    database: Database,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    """No node serves anything, and jobs are queued anyway: nothing will ever run them."""
    server = start_live_server(
        settings_overrides,
        tmp_path_factory.mktemp("door_headers"),
        QUEUE_WHILE_UNAVAILABLE="true",
        WS_HEARTBEAT_S="30",  # no keep-alive comment while the test looks for an empty body
    )
    yield server
    server.process.send_signal(signal.SIGINT)  # quick: an unfinished stream is not waited for
    stop_live_server(server)


@pytest.fixture
def headers(queueing_server: LiveServer, committed: Database) -> dict[str, str]:
    user = make_committed_user(committed)
    answer = requests.post(
        f"{queueing_server.url}/api/v1/auth/login",
        json={"username": user.username, "password": TEST_PASSWORD},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return bearer(answer.json()["access_token"])


@pytest.fixture
def events(redis_client: Redis) -> EventLog:
    return EventLog(redis_client, ttl_s=60)


def _finish(events: EventLog, job: uuid.UUID) -> None:
    """What a worker would publish for a one-token answer."""
    events.publish(job, "status", status="running", attempt=1)
    events.publish(job, "token", text="Hello", attempt=1)
    events.publish(job, "done", done_reason="stop", eval_count=1)
    events.publish(job, "status", status="completed", attempt=1)


def _open(
    server: LiveServer, path: str, body: dict[str, Any], auth: dict[str, str]
) -> socket.socket:
    address = urlsplit(server.url)
    connection = socket.create_connection((address.hostname, address.port), timeout=5)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Authorization: {auth['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    connection.sendall(head.encode() + payload)
    return connection


def _read_head(connection: socket.socket) -> tuple[str, dict[str, str], bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        assert chunk, f"closed before the headers: {received!r}"
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields, rest


def _read_all(connection: socket.socket, until: Callable[[bytes], bool]) -> bytes:
    received = b""
    deadline = time.monotonic() + 10
    while not until(received) and time.monotonic() < deadline:
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _assert_names_the_job(fields: dict[str, str]) -> uuid.UUID:
    job = uuid.UUID(fields[JOB_ID.lower()])
    assert fields["link"] == f'<{JOB_PATH.format(job)}>; rel="related"'
    assert fields["x-request-id"] != str(job)  # the HTTP exchange's id, not the job's
    return job


@pytest.mark.parametrize("path", sorted(STREAMED))
def test_a_stream_sends_its_headers_before_the_first_token_exists(
    queueing_server: LiveServer,
    headers: dict[str, str],
    events: EventLog,
    path: str,
) -> None:
    connection = _open(queueing_server, path, STREAMED[path], headers)
    job = None
    try:
        started = time.monotonic()
        status, fields, body = _read_head(connection)
        waited = time.monotonic() - started

        assert status == "HTTP/1.1 200 OK"
        assert fields["transfer-encoding"] == "chunked"
        job = _assert_names_the_job(fields)
        assert waited < 2  # sent at once, not when a token comes (none will)
        early = body + _available(connection, 0.5)
        if path == "/v1/chat/completions":
            assert b'"delta": {"role": "assistant", "content": ""}' in early  # OpenAI's opening
        else:
            # Nothing of the body, not even the empty chunk that would end it.
            assert early == b""

        # The job is findable by what the headers say, and still waiting.
        found = requests.get(
            f"{queueing_server.url}{JOB_PATH.format(job)}", headers=headers, timeout=5
        )
        assert found.status_code == 200
        assert found.json()["status"] == "queued"

        _finish(events, job)
        job = None
        rest = _read_all(connection, lambda seen: seen.endswith(b"0\r\n\r\n"))
        assert b"Hello" in rest
        assert rest.endswith(b"0\r\n\r\n")
    finally:
        if job is not None:  # end the stream, or the server would wait for it at its stop
            _finish(events, job)
        connection.close()


def _available(connection: socket.socket, within_s: float) -> bytes:
    """What arrives within `within_s`, without waiting for more."""
    connection.settimeout(within_s)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        pass
    connection.settimeout(5)
    return received


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_a_whole_answer_names_its_job_too(
    queueing_server: LiveServer,
    headers: dict[str, str],
    events: EventLog,
    path: str,
    body: dict[str, Any],
) -> None:
    answers: list[requests.Response] = []
    call = threading.Thread(
        target=lambda: answers.append(
            requests.post(f"{queueing_server.url}{path}", json=body, headers=headers, timeout=20)
        )
    )
    call.start()
    job = _queued_job(queueing_server, headers)
    _finish(events, job)
    call.join(timeout=20)

    (answer,) = answers
    assert answer.status_code == 200, answer.text
    assert _assert_names_the_job({k.lower(): v for k, v in answer.headers.items()}) == job


def _queued_job(server: LiveServer, headers: dict[str, str]) -> uuid.UUID:
    """The caller's one job, once it is queued (a whole answer sends its headers at the end)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page = requests.get(f"{server.url}/api/v1/inference/requests", headers=headers, timeout=5)
        items = page.json()["items"]
        if items:
            return uuid.UUID(items[0]["id"])
        time.sleep(0.05)
    raise AssertionError("the job was not queued")
