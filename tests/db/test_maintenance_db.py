"""db/maintenance.py: stale nodes marked offline in one statement, and the thin wrappers
around the SQL maintenance functions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from db.maintenance import (
    STALE_REASON,
    StaleNode,
    cleanup_old_data,
    create_audit_partitions,
    mark_stale_nodes_offline,
    refresh_dashboard_stats,
)
from db.models import Node, NodeStatus
from db.session import Database
from tests.factories import NodeFactory

MINUTE = timedelta(minutes=1)


def _names(stale: list[StaleNode]) -> set[str]:
    return {node.name for node in stale}


def test_only_nodes_alive_and_silent_too_long_go_offline(db_session: Session) -> None:
    now = datetime.now(UTC)
    silent = NodeFactory(last_heartbeat_at=now - 5 * MINUTE, slots_busy=2)
    degraded = NodeFactory(status=NodeStatus.DEGRADED, last_heartbeat_at=now - 5 * MINUTE)
    never = NodeFactory(last_heartbeat_at=None)
    fresh = NodeFactory(last_heartbeat_at=now)
    gone = NodeFactory(status=NodeStatus.OFFLINE, last_heartbeat_at=now - 5 * MINUTE)

    stale = mark_stale_nodes_offline(session=db_session, stale_after=MINUTE)

    mine = {silent.name, degraded.name, never.name, fresh.name, gone.name}
    assert _names(stale) & mine == {silent.name, degraded.name, never.name}
    rows = db_session.execute(
        select(Node.name, Node.status, Node.status_reason, Node.slots_busy).where(
            Node.name.in_(mine)
        )
    ).all()
    by_name = {name: (status, reason, busy) for name, status, reason, busy in rows}
    assert by_name[silent.name] == (NodeStatus.OFFLINE, STALE_REASON, 0)
    assert by_name[degraded.name][:2] == (NodeStatus.OFFLINE, STALE_REASON)
    assert by_name[fresh.name][0] == NodeStatus.ONLINE
    assert by_name[gone.name][1] is None  # already offline: untouched
    # Run again: nothing left to report.
    assert _names(mark_stale_nodes_offline(session=db_session, stale_after=MINUTE)) & mine == set()


def test_a_concurrent_run_does_not_report_a_node_the_first_one_took(
    committed: Database, silent_node: Node
) -> None:
    with committed.unit_of_work() as first_session:
        first = mark_stale_nodes_offline(session=first_session, stale_after=MINUTE)
        # The second run, while the first holds the row: it neither waits nor reports it.
        with committed.unit_of_work() as session:
            _fail_rather_than_wait(session)
            second = mark_stale_nodes_offline(session=session, stale_after=MINUTE)

    assert silent_node.name in _names(first)
    assert silent_node.name not in _names(second)


def test_a_node_whose_row_is_held_elsewhere_is_left_to_the_next_sweep(
    committed: Database, silent_node: Node
) -> None:
    """Its heartbeat may be under way, or its host cut off mid-heartbeat with the row locked
    until the server ends that transaction: the sweep does not wait for it (it would hold a
    worker's job slot as long), and takes the node once the row is free."""
    with committed.unit_of_work() as holder:
        holder.execute(select(Node.id).where(Node.id == silent_node.id).with_for_update())
        with committed.unit_of_work() as session:
            _fail_rather_than_wait(session)
            skipped = mark_stale_nodes_offline(session=session, stale_after=MINUTE)
    with committed.unit_of_work() as session:
        taken = mark_stale_nodes_offline(session=session, stale_after=MINUTE)

    assert silent_node.name not in _names(skipped)
    assert silent_node.name in _names(taken)


def _fail_rather_than_wait(session: Session) -> None:
    """A sweep that waited on the held row would wait on this very thread: fail it."""
    session.execute(text("SET LOCAL lock_timeout = '2s'"))


@pytest.fixture
def silent_node(committed: Database) -> Iterator[Node]:
    """An online node, committed, whose last heartbeat is five minutes old."""
    with committed.unit_of_work() as session:
        node = Node(
            name=f"stale-{time.monotonic_ns()}@test",
            hostname=f"stale-{time.monotonic_ns()}",
            engine_url="http://127.0.0.1:1",
            status=NodeStatus.ONLINE,
            last_heartbeat_at=datetime.now(UTC) - 5 * MINUTE,
        )
        session.add(node)
    yield node
    with committed.unit_of_work() as session:
        session.execute(delete(Node).where(Node.id == node.id))


def test_wrappers_call_the_sql_functions(db_session: Session) -> None:
    before = db_session.scalar(text("SELECT refreshed_at FROM dashboard_stats"))
    refreshed_at = refresh_dashboard_stats(session=db_session)
    assert refreshed_at >= before
    assert refreshed_at == db_session.scalar(text("SELECT refreshed_at FROM dashboard_stats"))

    created = create_audit_partitions(
        session=db_session, months_ahead=1, from_month=date(2099, 1, 1)
    )
    assert created == ["audit_log_entries_2099_01", "audit_log_entries_2099_02"]
    assert (
        create_audit_partitions(session=db_session, months_ahead=1, from_month=date(2099, 1, 1))
        == []
    )
    # Today's months exist already (the migration made them).
    assert create_audit_partitions(session=db_session) == []

    removed = cleanup_old_data(session=db_session, retention=timedelta(days=30))
    assert set(removed) == {"inference_requests", "user_sessions", "api_keys", "audit_log_entries"}
    assert all(count >= 0 for count in removed.values())
