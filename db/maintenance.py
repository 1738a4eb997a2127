"""Upkeep the database needs while it runs: stale nodes go offline, the dashboard view is
refreshed, audit partitions are created ahead, old data goes.

The last three are thin wrappers around the SQL functions of migrations 0002 and 0003 (see
docs/database.md). Like every data-access function here, these flush and never commit:
whoever opened the unit of work commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session

from db.fleet import forget_loaded
from db.models import Node, NodeStatus

STALE_REASON = "no heartbeat"


@dataclass(frozen=True)
class StaleNode:
    id: uuid.UUID
    name: str
    last_heartbeat_at: datetime | None


def mark_stale_nodes_offline(
    *, session: Session, stale_after: timedelta, reason: str = STALE_REASON
) -> list[StaleNode]:
    """Mark offline every node still believed alive whose last heartbeat is older than
    `stale_after` by the database's clock (or that never beat); returns the nodes changed.

    One UPDATE ... RETURNING whose rows are taken SKIP LOCKED: a row locked elsewhere is
    left to the next sweep. Its node is beating right now, or a concurrent sweep has it (and
    reports it, once), or a host cut off mid-heartbeat still holds it until the server ends
    that transaction (DB_IDLE_IN_TRANSACTION_TIMEOUT_S). Waiting for it instead would hold
    one of a worker's job slots for as long.
    """
    cutoff = func.now() - stale_after
    stale = (
        select(Node.id)
        .where(
            Node.status != NodeStatus.OFFLINE,
            or_(Node.last_heartbeat_at < cutoff, Node.last_heartbeat_at.is_(None)),
        )
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(Node)
        .where(Node.id.in_(stale))
        .values(status=NodeStatus.OFFLINE, status_reason=reason, slots_busy=0)
        .returning(Node.id, Node.name, Node.last_heartbeat_at)
        .execution_options(synchronize_session=False)
    ).all()
    forget_loaded(session=session, node_ids=[row[0] for row in rows])
    return [StaleNode(id=row[0], name=row[1], last_heartbeat_at=row[2]) for row in rows]


def refresh_dashboard_stats(*, session: Session) -> datetime:
    """Refresh the `dashboard_stats` view concurrently; returns its new `refreshed_at`."""
    refreshed_at: datetime = session.scalar(text("SELECT refresh_dashboard_stats()"))
    return refreshed_at


def create_audit_partitions(
    *, session: Session, months_ahead: int = 3, from_month: date | None = None
) -> list[str]:
    """Create the missing monthly audit partitions from `from_month` (default: this UTC
    month) through `months_ahead` months later; returns the names created."""
    return list(
        session.scalars(
            text("SELECT * FROM create_audit_partitions(:months_ahead, CAST(:from_month AS date))"),
            {"months_ahead": months_ahead, "from_month": from_month},
        )
    )


def cleanup_old_data(*, session: Session, retention: timedelta) -> dict[str, int]:
    """Delete finished requests, dead sessions and keys, and audit entries older than
    `retention` (at least one day); returns the rows removed per item."""
    rows = session.execute(
        text("SELECT item, removed FROM cleanup_old_data(CAST(:retention AS interval))"),
        {"retention": retention},
    )
    return {str(item): int(removed) for item, removed in rows}
