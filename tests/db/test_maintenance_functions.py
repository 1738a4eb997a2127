"""dashboard_stats and the maintenance functions: each is called and its answer checked."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.models import (
    AuditLogEntry,
    InferenceRequest,
    ModelUsageStats,
    RequestStatus,
    UserSession,
)
from tests.factories import (
    InferenceRequestFactory,
    ModelFactory,
    NodeFactory,
    UserFactory,
    UserSessionFactory,
)

LONG_AGO = datetime(2020, 1, 15, tzinfo=UTC)


@pytest.fixture
def notices(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Server NOTICEs, which SQLAlchemy's psycopg2 dialect logs (and then clears)."""
    caplog.set_level(logging.INFO, logger="sqlalchemy.dialects.postgresql")
    return caplog


def test_dashboard_stats_equal_counts_from_the_rows(db_session: Session) -> None:
    user = UserFactory()
    UserFactory(is_active=False)
    ModelFactory(status="available")
    ModelFactory()
    NodeFactory(slots=3)
    NodeFactory(status="offline", slots=5)
    now = datetime.now(UTC)
    for status in ("queued", "running", "completed", "completed", "failed"):
        InferenceRequestFactory(
            user_id=user.id,
            status=status,
            prompt_eval_count=10,
            eval_count=20,
            started_at=now if status != "queued" else None,
            completed_at=now if status in ("completed", "failed") else None,
        )
    InferenceRequestFactory(status="completed", created_at=now - timedelta(days=3))
    db_session.add_all(
        [
            ModelUsageStats(
                model_name="a:latest",
                day=date(2026, 1, 1),
                requests=7,
                completed=6,
                errors=1,
                prompt_tokens=70,
                completion_tokens=140,
            ),
            ModelUsageStats(
                model_name="b:latest",
                day=date(2026, 1, 2),
                requests=3,
                completed=3,
                prompt_tokens=30,
                completion_tokens=60,
            ),
        ]
    )
    db_session.flush()

    refreshed_at = db_session.scalar(text("SELECT refresh_dashboard_stats()"))
    row = db_session.execute(text("SELECT * FROM dashboard_stats")).mappings().one()

    assert refreshed_at == row["refreshed_at"]
    assert (row["users_total"], row["users_active"]) == (2, 1)
    assert (row["models_total"], row["models_available"]) == (2, 1)
    assert (row["nodes_total"], row["nodes_online"], row["slots_total"]) == (2, 1, 3)
    assert (row["requests_queued"], row["requests_running"]) == (1, 1)
    # The request from three days ago counts in no 24-hour figure.
    assert row["requests_24h"] == 5
    assert (row["completed_24h"], row["failed_24h"], row["cancelled_24h"]) == (2, 1, 0)
    assert (row["prompt_tokens_24h"], row["completion_tokens_24h"]) == (50, 100)
    assert (row["requests_total"], row["completed_total"], row["errors_total"]) == (10, 9, 1)
    assert (row["prompt_tokens_total"], row["completion_tokens_total"]) == (100, 200)


def test_dashboard_stats_has_the_unique_index_concurrent_refresh_needs(db_session: Session) -> None:
    indexdef = db_session.scalar(
        text("SELECT indexdef FROM pg_indexes WHERE tablename = 'dashboard_stats'")
    )
    assert "UNIQUE" in (indexdef or "")


def test_database_health_check_reports_every_check(db_session: Session) -> None:
    rows = db_session.execute(text("SELECT * FROM database_health_check()")).mappings().all()
    by_name = {row["check_name"]: row for row in rows}

    assert {
        "connections",
        "cache_hit_ratio",
        "long_running_queries",
        "idle_in_transaction",
        "dead_tuple_ratio",
        "transaction_id_age",
        "audit_partitions",
        "audit_default_partition_rows",
        "database_size_bytes",
    } <= by_name.keys()
    assert {row["status"] for row in rows} <= {"ok", "warning", "critical"}
    assert by_name["connections"]["value"] >= 1
    assert by_name["audit_partitions"]["status"] == "ok"


def test_health_check_warns_about_rows_in_the_default_partition(db_session: Session) -> None:
    db_session.add(AuditLogEntry(action="test", occurred_at=datetime(2099, 1, 1, tzinfo=UTC)))
    db_session.flush()

    status = db_session.scalar(
        text(
            "SELECT status FROM database_health_check()"
            " WHERE check_name = 'audit_default_partition_rows'"
        )
    )
    assert status == "warning"


def test_get_table_stats_lists_our_tables(db_session: Session) -> None:
    rows = db_session.execute(text("SELECT * FROM get_table_stats()")).mappings().all()
    names = {row["table_name"] for row in rows}

    assert {"users", "inference_requests", "nodes", "models"} <= names
    assert all(row["total_bytes"] >= row["table_bytes"] >= 0 for row in rows)


def test_get_slow_queries_without_the_extension_is_empty_with_a_notice(
    db_session: Session, notices: pytest.LogCaptureFixture
) -> None:
    db_session.execute(text("DROP EXTENSION IF EXISTS pg_stat_statements"))

    rows = db_session.execute(text("SELECT * FROM get_slow_queries(0)")).all()

    assert rows == []
    assert "pg_stat_statements is not installed" in notices.text


def test_get_slow_queries_with_the_extension_never_errors(
    db_session: Session, notices: pytest.LogCaptureFixture
) -> None:
    db_session.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    preloaded = "pg_stat_statements" in db_session.scalar(text("SHOW shared_preload_libraries"))

    rows = db_session.execute(text("SELECT * FROM get_slow_queries(0, 5)")).mappings().all()

    if preloaded:
        assert len(rows) <= 5
    else:  # installed but not loaded: still an answer, with the reason as a notice
        assert rows == []
        assert "pg_stat_statements is not usable" in notices.text


@pytest.mark.parametrize("time_zone", ["UTC", "Asia/Tokyo", "America/New_York"])
def test_cleanup_old_data_removes_only_what_is_past_retention(
    db_session: Session, time_zone: str
) -> None:
    db_session.execute(text(f"SET LOCAL TIME ZONE '{time_zone}'"))
    user = UserFactory()
    old_done = InferenceRequestFactory(
        user_id=user.id, status=RequestStatus.COMPLETED, completed_at=LONG_AGO
    )
    old_running = InferenceRequestFactory(user_id=user.id, status=RequestStatus.RUNNING)
    recent_done = InferenceRequestFactory(
        user_id=user.id, status=RequestStatus.COMPLETED, completed_at=datetime.now(UTC)
    )
    expired_session = UserSessionFactory(user=user, expires_at=LONG_AGO)
    live_session = UserSessionFactory(user=user)
    db_session.execute(text("SELECT create_audit_partitions(0, DATE '2020-01-01')")).all()
    db_session.add(AuditLogEntry(action="old", occurred_at=LONG_AGO))
    db_session.add(AuditLogEntry(action="stray", occurred_at=LONG_AGO - timedelta(days=400)))
    db_session.flush()
    ids = [old_done.id, old_running.id, recent_done.id, expired_session.id, live_session.id]
    db_session.expunge_all()

    removed = dict(
        db_session.execute(text("SELECT * FROM cleanup_old_data(interval '90 days')")).all()
    )

    assert removed == {
        "inference_requests": 1,
        "user_sessions": 1,
        "api_keys": 0,
        "audit_log_entries": 2,  # one in a dropped partition, one from the default
    }
    assert db_session.get(InferenceRequest, ids[0]) is None
    assert db_session.get(InferenceRequest, ids[1]) is not None
    assert db_session.get(InferenceRequest, ids[2]) is not None
    assert db_session.get(UserSession, ids[3]) is None
    assert db_session.get(UserSession, ids[4]) is not None
    assert db_session.scalar(text("SELECT to_regclass('audit_log_entries_2020_01')")) is None


def test_cleanup_refuses_a_retention_shorter_than_a_day(db_session: Session) -> None:
    with pytest.raises(DBAPIError, match="retention must be at least 1 day"):
        db_session.execute(text("SELECT * FROM cleanup_old_data(interval '1 hour')")).all()


@pytest.mark.parametrize("time_zone", ["Asia/Tokyo", "America/New_York", "Pacific/Kiritimati"])
def test_cleanup_keeps_a_partition_that_ends_inside_the_retention(
    db_session: Session, time_zone: str
) -> None:
    """Its last hours are still inside the window: whatever the session's time zone."""
    db_session.execute(text(f"SET LOCAL TIME ZONE '{time_zone}'"))
    db_session.execute(text("SELECT create_audit_partitions(0, DATE '2020-03-01')")).all()
    db_session.add(
        AuditLogEntry(action="late-march", occurred_at=datetime(2020, 3, 31, 23, tzinfo=UTC))
    )
    db_session.flush()
    # A retention that reaches back to 2020-03-31 20:00 UTC, inside March's partition.
    cutoff_age = datetime.now(UTC) - datetime(2020, 3, 31, 20, tzinfo=UTC)
    db_session.execute(
        text("SELECT * FROM cleanup_old_data(make_interval(secs => :secs))"),
        {"secs": cutoff_age.total_seconds()},
    ).all()
    assert db_session.scalar(text("SELECT to_regclass('audit_log_entries_2020_03')")) is not None
