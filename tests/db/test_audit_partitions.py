"""Monthly audit partitions: rows land by month, strays go to the default partition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from db.models import AuditLogEntry


def _this_month_start() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def _add_months(moment: datetime, months: int) -> datetime:
    index = moment.month - 1 + months
    return moment.replace(year=moment.year + index // 12, month=index % 12 + 1)


def _partition_of(session: Session, entry_id: int) -> str:
    return str(
        session.execute(
            text("SELECT tableoid::regclass::text FROM audit_log_entries WHERE id = :id"),
            {"id": entry_id},
        ).scalar_one()
    )


def _insert(session: Session, occurred_at: datetime) -> int:
    entry = AuditLogEntry(action="test.event", occurred_at=occurred_at, details={})
    session.add(entry)
    session.flush()
    return entry.id


def test_rows_in_two_months_land_in_their_own_partitions(db_session: Session) -> None:
    this_month = _this_month_start().replace(day=15)
    next_month = _add_months(this_month, 1)

    first = _insert(db_session, this_month)
    second = _insert(db_session, next_month)

    assert _partition_of(db_session, first) == f"audit_log_entries_{this_month:%Y_%m}"
    assert _partition_of(db_session, second) == f"audit_log_entries_{next_month:%Y_%m}"


def test_month_bounds_are_utc(db_session: Session) -> None:
    start = _this_month_start()
    just_before = _insert(db_session, start - timedelta(microseconds=1))
    first_instant = _insert(db_session, start)

    assert _partition_of(db_session, first_instant) == f"audit_log_entries_{start:%Y_%m}"
    # No partition exists for last month, so its last instant goes to the default one.
    assert _partition_of(db_session, just_before) == "audit_log_entries_default"


def test_far_future_row_goes_to_the_default_partition(db_session: Session) -> None:
    entry_id = _insert(db_session, datetime(2099, 3, 10, tzinfo=UTC))
    assert _partition_of(db_session, entry_id) == "audit_log_entries_default"


def test_creating_a_partition_moves_rows_out_of_the_default(db_session: Session) -> None:
    entry_id = _insert(db_session, datetime(2099, 3, 10, tzinfo=UTC))

    created = (
        db_session.execute(text("SELECT * FROM create_audit_partitions(1, DATE '2099-03-01')"))
        .scalars()
        .all()
    )

    assert created == ["audit_log_entries_2099_03", "audit_log_entries_2099_04"]
    assert _partition_of(db_session, entry_id) == "audit_log_entries_2099_03"
    assert db_session.scalar(text("SELECT count(*) FROM audit_log_entries_default")) == 0


def test_creating_partitions_is_idempotent(db_session: Session) -> None:
    create = text("SELECT * FROM create_audit_partitions(2, DATE '2098-01-01')")
    assert len(db_session.execute(create).all()) == 3
    assert db_session.execute(create).all() == []
