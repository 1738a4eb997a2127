"""Round-trip budgets of the hot path, asserted by counting (never by timing).

An accepted submission may cost the web process at most one PostgreSQL transaction of at
most three statements and at most four Redis commands (it costs one statement, a call of
admit() sent in autocommit, with a waiting-jobs quota or without, and three commands: the
budget script, the "queued" event, the broker's LPUSH); a job costs its worker two
transactions of one statement each, in autocommit (the fair claim, a running-jobs quota or
not; finish with the usage upserts), and one Redis round trip per event batch; no pool ping
or new connection on the way, and no ORM session around those calls. A change that adds a
round trip fails here, with the count. docs/benchmarks.md has what the same path costs in
CPU (`python -m bench.cost`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from redis.connection import Connection, PythonRespSerializer
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from config.settings import build_settings
from db.models import WebhookDelivery
from db.session import Database
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker
from tests.pipeline.jobs import finished, store_queued
from web.inference.service import final_state, followed_request_finished
from workers import runtime
from workers.celery_app import create_celery_app
from workers.engines import make_engine
from workers.events import EventLog
from workers.runtime_config import RuntimeConfigSource
from workers.tasks import inference

pytestmark = pytest.mark.usefixtures("fresh_double")

GENERATE = "/api/v1/inference/generate"
POOL_EVENTS = ("connect", "close")


@pytest.fixture(scope="module")
def worker(start_worker: Any, double: Double) -> Worker:
    return start_worker(double.url, name="w-budget@test", slots=2)


@dataclass
class Counts:
    statements: list[str] = field(default_factory=list)
    # Statements sent inside a transaction psycopg2 opened (BEGIN before, COMMIT after: two
    # round trips more), rather than in autocommit.
    in_transaction: int = 0
    transactions: int = 0
    # ORM sessions that began a transaction: a call of a database function needs none
    # (`Database.one_call`, a Core connection: the session's bookkeeping costs CPU).
    orm_sessions: int = 0
    connections: int = 0
    closed: int = 0
    redis_commands: list[str] = field(default_factory=list)
    redis_round_trips: int = 0


@contextmanager
def counting(engine: Engine, *, redis_client_name: str | None = None) -> Iterator[Counts]:
    """What this process sends: SQL statements, commits and rollbacks, and new connections
    on `engine`; Redis commands sent by this thread (a test client's request runs in it),
    and one named client's round trips from any thread."""
    counts = Counts()
    lock = threading.Lock()

    def statement(conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        with lock:
            counts.statements.append(sql.split(None, 1)[0].upper())
            counts.in_transaction += not conn.connection.dbapi_connection.autocommit

    def transaction(_conn: Any) -> None:
        with lock:
            counts.transactions += 1

    def connected(*_: Any) -> None:
        with lock:
            counts.connections += 1

    def session_began(session: Session, *_: Any) -> None:
        if session.bind is engine:
            with lock:
                counts.orm_sessions += 1

    def closed(*_: Any) -> None:
        with lock:
            counts.closed += 1

    listeners = [
        ("before_cursor_execute", statement),
        ("commit", transaction),
        ("rollback", transaction),
        ("connect", connected),
        ("close", closed),
    ]
    for name, listener in listeners:
        event.listen(engine.pool if name in POOL_EVENTS else engine, name, listener)
    event.listen(Session, "after_begin", session_began)
    try:
        with _counting_redis(counts, lock, redis_client_name):
            yield counts
    finally:
        for name, listener in listeners:
            event.remove(engine.pool if name in POOL_EVENTS else engine, name, listener)
        event.remove(Session, "after_begin", session_began)


@contextmanager
def _counting_redis(
    counts: Counts, lock: threading.Lock, client_name: str | None
) -> Iterator[None]:
    original_pack = PythonRespSerializer.pack
    original_send = Connection.send_packed_command
    counting_thread = threading.get_ident()

    def pack(self: PythonRespSerializer, *args: Any) -> Any:
        # The request's own commands: background threads of the process (a pub/sub
        # listener's health-check PING) are not the submission's.
        if threading.get_ident() == counting_thread:
            with lock:
                counts.redis_commands.append(str(args[0]))
        return original_pack(self, *args)

    def send(self: Connection, *args: Any, **kwargs: Any) -> Any:
        if self.client_name == client_name:
            with lock:
                counts.redis_round_trips += 1
        return original_send(self, *args, **kwargs)

    PythonRespSerializer.pack = pack  # type: ignore[method-assign]
    Connection.send_packed_command = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        PythonRespSerializer.pack = original_pack  # type: ignore[method-assign]
        Connection.send_packed_command = original_send  # type: ignore[method-assign]


def _api_key(api: FlaskClient, headers: dict[str, str]) -> dict[str, str]:
    created = api.post(
        "/api/v1/users/api-keys",
        json={"name": "budget", "scopes": ["inference"], "current_password": TEST_PASSWORD},
        headers=headers,
    )
    return {"Authorization": f"Bearer {created.get_json()['key']}"}


# A public address, written as one: no DNS on the way (no deliverer runs here, so the
# delivery the job's end queues just waits).
WEBHOOK = "http://1.1.1.1/hook"


def _submit(api: FlaskClient, headers: dict[str, str], **extra: Any) -> str:
    answer = api.post(
        GENERATE,
        json={"model": "llama3.2", "prompt": "budget", "options": {"num_predict": 3}, **extra},
        headers=headers,
    )
    assert answer.status_code == 202, answer.get_json()
    return str(answer.get_json()["id"])


@pytest.mark.parametrize("webhook", [False, True])
@pytest.mark.parametrize("credential", ["jwt", "api_key"])
# A plain user has a waiting-jobs quota (admit() counts under the owner's lock); operators
# and admins have none by default. One call of admit() either way.
@pytest.mark.parametrize("caller", ["user", "operator"])
def test_an_accepted_submission_costs_one_short_transaction_and_four_redis_commands(
    webhook: bool,
    credential: str,
    caller: str,
    api: FlaskClient,
    user_headers: dict[str, str],
    operator_headers: dict[str, str],
    worker: Worker,
) -> None:
    login = user_headers if caller == "user" else operator_headers
    headers = _api_key(api, login) if credential == "api_key" else login
    app: Flask = api.application  # type: ignore[assignment]
    cache = app.extensions["principal_cache"]
    _submit(api, headers)  # resolves the caller once (a cache miss reads the database)
    assert cache.listening.wait(5), "the principal cache never started listening"
    _submit(api, headers)  # now remembered

    # A webhook URL is one more column of the same insert.
    extra = {"webhook_url": WEBHOOK} if webhook else {}
    with counting(app.extensions["db"].engine) as counts:
        request_id = _submit(api, headers, **extra)

    assert counts.transactions <= 1, counts.statements
    assert len(counts.statements) <= 3, counts.statements
    assert counts.statements == ["SELECT"]  # SELECT * FROM admit(...)
    assert counts.in_transaction == 0  # autocommit: no BEGIN or COMMIT on the wire
    assert counts.orm_sessions == 0
    assert counts.connections == 0
    assert len(counts.redis_commands) <= 4, counts.redis_commands
    assert finished(api, headers, request_id)["status"] == "completed"


def test_a_follower_is_admitted_from_the_events_and_its_last_frame_costs_a_statement(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker
) -> None:
    """/ws/inference/<id> checks that the caller may follow the request, and whether it has
    finished: from the request's stored events (one XINFO STREAM, no SQL) while they hold
    the first one, from two columns read in autocommit once they are gone. Its last frame,
    the request as stored, is one statement in autocommit (the events between are Redis's).
    tests/pipeline/test_relay_streams.py has who may follow whose request."""
    app: Flask = api.application  # type: ignore[assignment]
    engine = app.extensions["db"].engine
    request_id = uuid.UUID(_submit(api, user_headers))
    assert finished(api, user_headers, str(request_id))["status"] == "completed"
    app.extensions["principal_cache"].listening.wait(5)
    with app.test_request_context(headers=user_headers):
        followed_request_finished(request_id)  # the caller remembered from here on

    with app.test_request_context(headers=user_headers), counting(engine) as from_events:
        assert followed_request_finished(request_id) is True
    app.extensions["events"].redis.delete(f"omx:req:{request_id}:events")  # EVENT_TTL_S passed
    with app.test_request_context(headers=user_headers), counting(engine) as from_database:
        assert followed_request_finished(request_id) is True
    with app.app_context(), counting(engine) as ending:
        state = final_state(request_id)

    assert from_events.statements == []
    assert from_events.redis_commands == ["XINFO STREAM"]
    assert state is not None
    assert state["status"] == "completed"
    for counts in (from_database, ending):
        assert counts.statements == ["SELECT"]
        assert counts.in_transaction == 0
        assert counts.connections == 0
    assert from_database.orm_sessions == 0


def test_twenty_callers_churn_no_connection_and_ping_none(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker
) -> None:
    app: Flask = api.application  # type: ignore[assignment]
    engine = app.extensions["db"].engine
    assert engine.pool._pre_ping is False  # a SELECT 1 before each checkout doubles the trips
    _submit(api, user_headers)
    app.extensions["principal_cache"].listening.wait(5)

    def wave() -> None:
        accepted: list[str] = []  # list.extend is atomic: the callers' threads share it
        clients = [app.test_client() for _ in range(20)]
        threads = [
            threading.Thread(
                target=lambda c=c: accepted.extend(_submit(c, user_headers) for _ in range(3))
            )
            for c in clients
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(accepted) == 60  # a refused submission failed only its own thread

    wave()  # the pool grows to what 20 callers need at once
    with counting(engine) as counts:
        wave()
    assert counts.closed == 0  # nothing opened for one job and closed after it
    assert counts.connections <= 20 - 1  # at most growth to one per caller, never beyond
    # The 60 calls of admit(), and at most a re-read of the caller whose cache entry
    # expired.
    assert set(counts.statements) == {"SELECT"}, counts.statements
    assert 60 <= len(counts.statements) <= 60 + 3, counts.statements


@pytest.mark.parametrize(
    ("caps", "claim"),
    [
        # The fair claim: one call of fair_claim() picks the model's fair-first job and
        # claims it.
        ({}, ["SELECT"]),
        # A capped job too: the function takes its owner's lock, then counts and claims.
        ({"running_cap": 4}, ["SELECT"]),
        # A webhook costs no statement: the trigger on the finish queues its delivery.
        ({"webhook_url": WEBHOOK}, ["SELECT"]),
    ],
)
def test_a_job_costs_its_worker_two_transactions_and_a_round_trip_per_event_batch(
    caps: dict[str, Any],
    claim: list[str],
    settings_overrides: dict[str, Any],
    committed: Database,
    double: Double,
    worker: Worker,
    api: FlaskClient,
    user_headers: dict[str, str],
) -> None:
    """The task run in this process, against the double, with a fresh pool of its own."""
    settings = build_settings({**settings_overrides, "token_coalesce_ms": 20})
    database = Database.from_settings(settings, pool_size=3)
    events_redis = Redis.from_url(settings.redis_url, client_name="omx-events")
    rt = runtime.Runtime(
        settings=settings,
        database=database,
        celery=create_celery_app(settings),
        redis=Redis.from_url(settings.redis_url),
        events=EventLog(events_redis, ttl_s=settings.event_ttl_s),
        runtime_config=RuntimeConfigSource(settings, database, Redis.from_url(settings.redis_url)),
        engine=make_engine("ollama", double.url, settings),
        worker_name="budget@test",
        node_name="budget@test",
        engine_url=double.url,
        gpu_index=None,
    )
    double.configure(token_delay_s=0.002, first_token_delay_s=0)
    owner = api.get("/api/v1/users/profile", headers=user_headers).get_json()["id"]

    def queued_job() -> uuid.UUID:
        return store_queued(committed, owner, {"prompt": "count me"}, {"num_predict": 20}, **caps)

    previous = runtime._runtime
    runtime.install(rt)
    try:
        inference.run(str(queued_job()))  # warms the pool, the run-time config and the script
        job_id = queued_job()
        with counting(database.engine, redis_client_name="omx-events") as counts:
            inference.run(str(job_id))
    finally:
        runtime._runtime = previous
        rt.watcher.stop()
        database.dispose()

    stored = EventLog(events_redis, 60).replay(job_id)
    assert stored[-1]["status"] == "completed"
    assert [e["type"] for e in stored][:2] == ["status", "token"]  # the first token at once
    assert counts.transactions == 2, counts.statements  # claim; finish with usage
    assert counts.statements == [*claim, "SELECT"], counts.statements  # ..., finish_job(...)
    assert counts.in_transaction == 0  # both in autocommit: one round trip each
    assert counts.orm_sessions == 0
    assert counts.connections == 0
    with committed.unit_of_work() as session:
        deliveries = session.scalar(
            select(func.count()).where(WebhookDelivery.request_id == job_id)
        )
    assert deliveries == (1 if "webhook_url" in caps else 0)
    token_events = sum(e["type"] == "token" for e in stored)
    # One round trip per batch: "running", each token event, and the final batch ("done",
    # the status, and the text not yet published if there is any). The final batch holds no
    # token when the coalescing timer flushed the last text just before the engine's final
    # chunk came (under load, CI saw it), so the bound counts it apart.
    assert counts.redis_round_trips <= 1 + token_events + 1, stored
    assert len(stored) - counts.redis_round_trips >= 1  # "done" and the status went together
