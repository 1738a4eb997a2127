"""Beat's maintenance: a silent node goes offline (and is announced once), the dashboard view
is refreshed, audit partitions are created ahead, old data goes with the retention.

The stale-node path runs for real (beat, workers, one killed); the other jobs run their task
function in this process against the test's rolled-back transaction."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Connection, delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from config.settings import build_settings
from db.models import InferenceRequest, Node, NodeStatus, RequestStatus
from db.session import Database
from db.system_config import store_values
from tests.factories import InferenceRequestFactory, UserFactory
from tests.pipeline.conftest import Double, node_online, start_beat, wait_for
from workers import runtime
from workers.celery_app import create_celery_app
from workers.events import EventLog
from workers.runtime_config import RuntimeConfigSource
from workers.tasks import maintenance

STALE_AFTER_S = 3
NODE_CHANNEL = "omx:topic:node_status"


def _node_events(pubsub: Any, seconds: float) -> list[dict[str, Any]]:
    """The node_status messages that arrive within `seconds`."""
    events = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 0.2))
        if message is not None:
            events.append(json.loads(message["data"]))
    return events


def _offline_events(events: list[dict[str, Any]], node: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("node") == node and e["type"] == "offline"]


def _node(database: Database, name: str) -> tuple[str, str | None]:
    with database.unit_of_work() as session:
        row = session.execute(
            select(Node.status, Node.status_reason).where(Node.name == name)
        ).one()
    return row[0], row[1]


def test_a_killed_worker_goes_offline_once_and_a_beating_one_stays_online(
    start_worker: Any,
    double: Double,
    database: Database,
    pipeline_env: dict[str, str],
    redis_client: Redis,
    tmp_path: Any,
) -> None:
    env = {"NODE_STALE_AFTER_S": str(STALE_AFTER_S)}
    victim = start_worker(double.url, name="w-stale@test", slots=1, env=env)
    keeper = start_worker(double.url, name="w-keeper@test", slots=1, env=env)
    beat = start_beat({**pipeline_env, **env}, tmp_path)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(NODE_CHANNEL)
    try:
        assert node_online(database, victim.name)
        assert node_online(database, keeper.name)
        _node_events(pubsub, 0.1)  # the subscription is confirmed; older news is not ours

        victim.kill()  # SIGKILL: no goodbye, the heartbeat just stops
        killed_at = time.monotonic()

        wait_for(lambda: _node(database, victim.name)[0] == NodeStatus.OFFLINE, timeout=15)
        elapsed = time.monotonic() - killed_at
        # Silent for NODE_STALE_AFTER_S, then seen by the next sweep (0.5 s) or so.
        assert elapsed < STALE_AFTER_S + 3, elapsed
        assert _node(database, victim.name) == (NodeStatus.OFFLINE, "no heartbeat")

        events = _node_events(pubsub, 1.5)  # later sweeps must not announce it again
        [offline] = _offline_events(events, victim.name)
        assert offline["status"] == "offline"
        assert offline["reason"] == "no heartbeat"
        assert offline["node_id"]
        assert _offline_events(events, keeper.name) == []
        assert node_online(database, keeper.name)
    finally:
        pubsub.close()
        beat.terminate()
        beat.wait(timeout=10)
        keeper.stop()
        victim.stop()


# --- the task functions, in this process ------------------------------------------------


def _install(settings_overrides: dict[str, Any], database: Database, redis: Redis) -> None:
    settings = build_settings(settings_overrides)
    runtime.install(
        runtime.Runtime(
            settings=settings,
            database=database,
            celery=create_celery_app(settings),
            redis=redis,
            events=EventLog(redis, ttl_s=settings.event_ttl_s),
            runtime_config=RuntimeConfigSource(settings, database, redis),
            engine=None,  # type: ignore[arg-type]  # maintenance never calls an engine
            worker_name="maintenance@test",
            node_name="maintenance@test",
            engine_url="http://127.0.0.1:1",
            gpu_index=None,
        )
    )


@pytest.fixture
def restore_runtime() -> Iterator[None]:
    previous = runtime._runtime
    yield
    runtime._runtime = previous


@pytest.fixture
def in_transaction(
    settings_overrides: dict[str, Any],
    connection: Connection,
    session_factory: sessionmaker[Session],
    db_session: Session,
    redis_client: Redis,
    restore_runtime: None,
) -> Session:
    """Tasks run against the test's transaction (rolled back after it); returns its session."""
    _install(
        settings_overrides,
        Database(connection.engine, session_factory, autocommit=False),
        redis_client,
    )
    return db_session


@pytest.fixture
def for_real(
    settings_overrides: dict[str, Any],
    committed: Database,
    redis_client: Redis,
    restore_runtime: None,
) -> Database:
    """Tasks run against the real database, as a worker's would."""
    _install(settings_overrides, committed, redis_client)
    return committed


def test_concurrent_stale_node_runs_report_a_node_once(
    for_real: Database, redis_client: Redis
) -> None:
    name = f"w-silent-{time.monotonic_ns()}@test"
    with for_real.unit_of_work() as session:
        session.add(
            Node(
                name=name,
                hostname=name,
                engine_url="http://127.0.0.1:1",
                status=NodeStatus.ONLINE,
                last_heartbeat_at=datetime.now(UTC) - timedelta(minutes=5),
            )
        )
    pubsub = redis_client.pubsub()
    pubsub.subscribe(NODE_CHANNEL)
    try:
        _node_events(pubsub, 0.1)
        start = threading.Barrier(4)

        def run() -> None:
            start.wait()
            maintenance.stale_nodes()

        runs = [threading.Thread(target=run) for _ in range(4)]
        for thread in runs:
            thread.start()
        for thread in runs:
            thread.join(timeout=10)
        maintenance.stale_nodes()  # and once more afterwards

        [offline] = _offline_events(_node_events(pubsub, 0.5), name)
        assert offline["reason"] == "no heartbeat"
        assert _node(for_real, name) == (NodeStatus.OFFLINE, "no heartbeat")
        assert int(redis_client.get("omx:cache:nodes:version") or 0) >= 1  # API lists renewed
    finally:
        pubsub.close()
        with for_real.unit_of_work() as session:
            session.execute(delete(Node).where(Node.name == name))


def test_refresh_brings_the_dashboard_up_to_date(in_transaction: Session) -> None:
    session = in_transaction
    live_users = text("SELECT count(*) FROM users WHERE deleted_at IS NULL")
    # Counted live, not read from dashboard_stats: the stored row may be stale (users an
    # earlier test created and removed since the last refresh), which is what refresh fixes.
    users_before = session.scalar(live_users)
    UserFactory()
    UserFactory()

    refreshed = maintenance.refresh_dashboard()

    after = session.execute(text("SELECT users_total, refreshed_at FROM dashboard_stats")).one()
    assert refreshed == after.refreshed_at.isoformat()
    assert after.refreshed_at == session.scalar(text("SELECT now()"))  # by this transaction
    assert after.users_total == session.scalar(live_users) == users_before + 2


def _next_month(today: date) -> date:
    return date(today.year + today.month // 12, today.month % 12 + 1, 1)


def _audit_partitions(session: Session) -> set[str]:
    return set(
        session.scalars(
            text(
                "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'audit_log_entries'::regclass"
            )
        )
    )


def test_the_partition_job_creates_next_months_partition(
    in_transaction: Session, caplog: pytest.LogCaptureFixture
) -> None:
    session = in_transaction
    name = f"audit_log_entries_{_next_month(datetime.now(UTC).date()):%Y_%m}"
    session.execute(text(f'DROP TABLE "{name}"'))  # as if the migration had not made it
    assert name not in _audit_partitions(session)
    caplog.set_level("INFO", logger=maintenance.__name__)

    assert maintenance.audit_partitions() == [name]

    assert name in _audit_partitions(session)
    assert name in caplog.text
    assert maintenance.audit_partitions() == []  # idempotent


def test_cleanup_removes_finished_requests_older_than_the_configured_retention(
    in_transaction: Session, caplog: pytest.LogCaptureFixture
) -> None:
    session = in_transaction
    store_values(session=session, values={"retention_days": 10}, user_id=None)
    now = datetime.now(UTC)
    user = UserFactory()

    def request(status: RequestStatus, days_ago: float) -> Any:
        at = now - timedelta(days=days_ago)
        finished = status not in (RequestStatus.QUEUED, RequestStatus.RUNNING)
        return InferenceRequestFactory(
            user_id=user.id, status=status, created_at=at, completed_at=at if finished else None
        )

    old = [request(RequestStatus.COMPLETED, 11), request(RequestStatus.FAILED, 30)]
    kept = [
        request(RequestStatus.COMPLETED, 9),  # finished, within the retention
        request(RequestStatus.CANCELLED, 0),
        request(RequestStatus.QUEUED, 30),  # old, but not finished
    ]
    session.flush()
    caplog.set_level("INFO", logger=maintenance.__name__)

    removed = maintenance.cleanup()

    assert removed["inference_requests"] == len(old)
    left = set(session.scalars(select(InferenceRequest.id)))
    assert {r.id for r in kept} <= left
    assert not {r.id for r in old} & left
    assert "retention 10 days" in caplog.text
    assert "inference_requests: 2" in caplog.text


def test_a_job_whose_lock_is_held_elsewhere_does_nothing(
    in_transaction: Session, redis_client: Redis
) -> None:
    InferenceRequestFactory(
        status=RequestStatus.COMPLETED, completed_at=datetime.now(UTC) - timedelta(days=400)
    )
    in_transaction.flush()
    lock = redis_client.lock(f"omx:lock:{maintenance.CLEANUP}", timeout=10)
    assert lock.acquire(blocking=False)
    try:
        assert maintenance.cleanup() == {}
    finally:
        lock.release()
    assert maintenance.cleanup()["inference_requests"] == 1


def test_beat_schedules_every_job_with_an_expiry(settings_overrides: dict[str, Any]) -> None:
    celery_app = create_celery_app(build_settings(settings_overrides))
    schedule = {entry["task"]: entry for entry in celery_app.conf.beat_schedule.values()}
    for task in (
        maintenance.STALE_NODES,
        maintenance.REFRESH_DASHBOARD,
        maintenance.AUDIT_PARTITIONS,
        maintenance.CLEANUP,
    ):
        assert task in celery_app.tasks
        assert schedule[task]["options"]["expires"] > 0
    assert schedule[maintenance.REFRESH_DASHBOARD]["schedule"] == 60
    assert schedule[maintenance.AUDIT_PARTITIONS]["schedule"] == 24 * 3600
    assert schedule[maintenance.CLEANUP]["schedule"] == 3600
