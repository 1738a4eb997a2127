"""A dependency of a running worker goes away mid-generation and comes back (issue 14;
docs/operations.md, "Faults"): no accepted job fails or is lost, none is generated twice
for an outage shorter than its bounds, and readers see every event once, in order.

Real processes throughout: a worker (`python -m workers run`), the Ollama double, and, for
Redis and PostgreSQL, throwaway servers of the test's own (tests/support/throwaway.py),
since the machine's own are shared and must never be stopped. The web side of a PostgreSQL
outage (503s) is tests/faults/test_database_outage.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from config.settings import build_settings
from db.session import Database
from tests.conftest import (
    ROOT,
    free_port,
    make_committed_user,
    start_live_server,
    stop_live_server,
)
from tests.factories import TEST_PASSWORD
from tests.ollama_double.behaviour import tokens_for
from tests.pipeline.conftest import Double, Worker, wait_for
from tests.support.apps import stop_background
from tests.support.identity import bearer
from tests.support.throwaway import ThrowawayPostgres, ThrowawayRedis
from tests.support.ws import connect, next_frame
from web import create_app
from workers.events import EventLog

TOKENS = 30
TOKEN_DELAY_S = 0.1  # 3 s a job: the outage falls in the middle of the running ones
TERMINAL = {"completed", "failed", "cancelled"}


def own_double(port: int, model: str) -> Double:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.ollama_double", "--port", str(port), "--models", model],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    double = Double(port, process)
    wait_for(lambda: _answers(double.url), timeout=10)
    double.configure(token_delay_s=TOKEN_DELAY_S, default_tokens=TOKENS)
    return double


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


class Engine:
    """A double of the test's own, serving the one model `outage`, that may be restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.double = own_double(self.port, "outage:latest")

    @property
    def url(self) -> str:
        return self.double.url

    def restart(self, down_s: float) -> None:
        """Killed mid-generation, back on the same port `down_s` later."""
        self.double.process.kill()
        self.double.process.wait()
        time.sleep(down_s)
        self.double = own_double(self.port, "outage:latest")


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = Engine()
    yield engine
    engine.double.process.kill()
    engine.double.process.wait()


class Api:
    """The REST API of one app (in this process), as one user."""

    def __init__(self, overrides: dict[str, Any], database: Database) -> None:
        self.app = create_app(overrides)
        self.client = self.app.test_client()
        user = make_committed_user(database)
        login = self.client.post(
            "/api/v1/auth/login", json={"username": user.username, "password": TEST_PASSWORD}
        )
        assert login.status_code == 200, login.get_json()
        self.headers = bearer(login.get_json()["access_token"])

    def submit(self, prompt: str, model: str = "outage") -> str:
        body = {"model": model, "prompt": prompt}
        answer = self.client.post("/api/v1/inference/generate", json=body, headers=self.headers)
        assert answer.status_code == 202, answer.get_json()
        return str(answer.get_json()["id"])

    def read(self, request_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/api/v1/inference/requests/{request_id}", headers=self.headers)
        return answer.get_json()  # type: ignore[no-any-return]

    def running_with_text(self, ids: list[str]) -> bool:
        events: EventLog = self.app.extensions["events"]
        return all(any(e["type"] == "token" for e in events.replay(i)) for i in ids)

    def close(self) -> None:
        stop_background(self.app)

    def all_ended(
        self, ids: list[str], timeout: float, worker: Worker | None = None
    ) -> dict[str, dict[str, Any]]:
        """Every job's row once all have ended; on a timeout, the failure names each job's
        status and carries the end of `worker`'s log, which says where the rest stand."""

        def ended() -> dict[str, dict[str, Any]] | None:
            rows = {i: self.read(i) for i in ids}
            return rows if all(r.get("status") in TERMINAL for r in rows.values()) else None

        try:
            return wait_for(ended, timeout=timeout, interval=0.3)  # type: ignore[no-any-return]
        except TimeoutError:
            rows = {i: self.read(i) for i in ids}
            statuses = {i: (r.get("status"), r.get("attempt")) for i, r in rows.items()}
            tail = "\n".join(worker.log().splitlines()[-80:]) if worker is not None else ""
            raise AssertionError(f"not all ended within {timeout}s: {statuses}\n{tail}") from None


def assert_readers_saw_each_event_once(events: EventLog, request_id: str, output: str) -> None:
    """Stored events numbered 1..n without a gap or a repeat, ending `completed`; the text
    of the last attempt is the stored output."""
    stored = events.replay(request_id)
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert stored[-1]["status"] == "completed"
    last = max(e.get("attempt", 0) for e in stored)
    text = "".join(e["text"] for e in stored if e["type"] == "token" and e["attempt"] == last)
    assert text == output


def test_an_engine_restart_fails_no_job(
    engine: Engine,
    start_worker: Any,
    settings_overrides: dict[str, Any],
    committed: Database,
) -> None:
    worker = start_worker(engine.url, name="w-engine-restart@test", slots=2)
    api = Api(settings_overrides, committed)
    try:
        prompts = [f"engine restart {n}" for n in range(8)]
        ids = [api.submit(prompt) for prompt in prompts]
        wait_for(lambda: api.running_with_text(ids[:2]), timeout=20)

        engine.restart(down_s=3)

        rows = api.all_ended(ids, timeout=90, worker=worker)
        assert {i: r["status"] for i, r in rows.items()} == dict.fromkeys(ids, "completed"), rows
        for request_id, prompt in zip(ids, prompts, strict=True):
            assert rows[request_id]["output"] == "".join(tokens_for(prompt, TOKENS))
            assert rows[request_id]["attempt"] <= 2  # handed back at most once
        log = worker.log()
        assert "the engine does not answer" in log
        assert "the engine answers again" in log
    finally:
        # Its model queue is every test's here: a worker left running would take their jobs.
        worker.stop()
        api.close()


def test_a_redis_restart_mid_generation_fails_no_job_and_leaves_no_gap(
    start_worker: Any,
    settings_overrides: dict[str, Any],
    committed: Database,
    engine: Engine,
    tmp_path: Path,
) -> None:
    with ThrowawayRedis() as redis:
        overrides = {**settings_overrides, "redis_url": redis.url}
        worker = start_worker(
            engine.url, name="w-redis-restart@test", slots=3, env={"REDIS_URL": redis.url}
        )
        web = start_live_server(overrides, tmp_path, WS_HEARTBEAT_S="0.5")
        api = Api(overrides, committed)
        try:
            prompts = [f"redis restart {n}" for n in range(6)]
            ids = [api.submit(prompt) for prompt in prompts]
            token = api.headers["Authorization"].removeprefix("Bearer ")
            followers = [FollowerThread(web.url, i, token) for i in ids[:3]]
            wait_for(lambda: api.running_with_text(ids[:3]), timeout=20)

            redis.stop()  # SHUTDOWN: what it acknowledged is on disk
            time.sleep(3)
            redis.start()

            rows = api.all_ended(ids, timeout=90, worker=worker)
            statuses = {i: r["status"] for i, r in rows.items()}
            assert statuses == dict.fromkeys(ids, "completed"), (statuses, worker.log()[-3000:])
            events: EventLog = api.app.extensions["events"]
            for request_id, prompt in zip(ids, prompts, strict=True):
                assert rows[request_id]["output"] == "".join(tokens_for(prompt, TOKENS))
                assert rows[request_id]["attempt"] == 1  # not generated again
                assert_readers_saw_each_event_once(events, request_id, rows[request_id]["output"])
            for follower in followers:
                follower.join(timeout=30)
                assert follower.text == rows[follower.request_id]["output"], follower.frames
                assert follower.seqs == sorted(set(follower.seqs))  # once each, in order
            log = worker.log()
            assert "holding its events" in log
            assert "Redis is back; published" in log  # the held events went out after it
        finally:
            stop_live_server(web)
            worker.stop()
            api.close()


class FollowerThread:
    """A WebSocket reader of one job, as a client would write one: it reconnects after
    `?after=<last seq>` when the socket ends before the job's terminal status."""

    def __init__(self, base_url: str, request_id: str, token: str) -> None:
        self.base_url, self.request_id, self.token = base_url, request_id, token
        self.seqs: list[int] = []
        self.tokens: list[tuple[int, str]] = []
        self.done = False
        self.frames: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        """The answer as the client has it: its tokens, or the stored result that a socket
        opened between the result's storing and its events' publishing ends with."""
        if self.final is not None:
            return str(self.final["output"])
        return "".join(text for _, text in self.tokens)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        deadline = time.monotonic() + 90
        while not self.done and time.monotonic() < deadline:
            after = self.seqs[-1] if self.seqs else 0
            path = f"/ws/inference/{self.request_id}?after={after}"
            try:
                ws = connect(self.base_url, path, self.token)
            except (OSError, websocket.WebSocketException):
                time.sleep(0.5)  # the web process cannot serve sockets while Redis is away
                continue
            try:
                while (frame := next_frame(ws)) is not None:
                    self._take(frame)
            finally:
                ws.close()

    def _take(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        if "seq" in frame:
            self.seqs.append(frame["seq"])
        if frame.get("type") == "status" and frame.get("status") == "restarted":
            self.tokens.clear()
        if frame.get("type") == "token":
            self.tokens.append((frame["seq"], frame["text"]))
        if frame.get("type") == "status" and frame.get("status") in TERMINAL:
            self.done = True
        if frame.get("type") == "final":
            self.final = frame["request"]
            self.done = True


def test_a_postgresql_outage_at_finish_keeps_the_result(
    start_worker: Any,
    settings_overrides: dict[str, Any],
    engine: Engine,
) -> None:
    with ThrowawayPostgres() as postgres:
        url = postgres.migrated("ollamamax_outage")
        overrides = {**settings_overrides, "database_url": url}
        database = Database.from_settings(build_settings(overrides), pool_size=2)
        worker = start_worker(
            engine.url,
            name="w-pg-outage@test",
            slots=3,
            # The lease outlasts the outage: the worker keeps its jobs and their results.
            env={"DATABASE_URL": url, "LEASE_TTL_S": "20"},
        )
        api = Api(overrides, database)
        try:
            prompts = [f"postgres outage {n}" for n in range(3)]
            ids = [api.submit(prompt) for prompt in prompts]
            wait_for(lambda: api.running_with_text(ids), timeout=20)

            postgres.stop()  # they finish while it is down
            time.sleep(TOKENS * TOKEN_DELAY_S + 1)
            postgres.start()

            rows = api.all_ended(ids, timeout=60, worker=worker)
            for request_id, prompt in zip(ids, prompts, strict=True):
                row = rows[request_id]
                assert row["status"] == "completed", (row, worker.log()[-3000:])
                assert row["output"] == "".join(tokens_for(prompt, TOKENS))
                assert row["attempt"] == 1  # stored when PostgreSQL returned, not generated again
            assert "storing its outcome failed" in worker.log()
        finally:
            worker.stop()
            api.close()
            database.dispose()
