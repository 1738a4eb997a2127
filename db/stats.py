"""Numbers for operators: the `dashboard_stats` materialized view (migration 0003) and live
counts that must not wait for its next refresh (queue depth, running jobs, slots, throughput).

Every live figure reads through a partial index (queued/running requests, finished requests by
`completed_at`) or the small `nodes` table, so asking often stays cheap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db.models import InferenceRequest, Node, RequestStatus, User

log = logging.getLogger(__name__)

# A fixed key for pg_try_advisory_xact_lock: one refresh at a time, the others skip it.
REFRESH_LOCK_KEY = 0x0D45_B0A2
THROUGHPUT_WINDOW = timedelta(seconds=60)


def dashboard(*, session: Session) -> dict[str, Any] | None:
    """The view's one row as plain JSON-able values (its averages are numeric)."""
    row = session.execute(text("SELECT * FROM dashboard_stats")).mappings().one_or_none()
    if row is None:
        return None
    return {
        key: float(value) if isinstance(value, Decimal) else value
        for key, value in row.items()
        if key != "id"
    }


def refresh_dashboard(*, session: Session, older_than_s: float) -> bool:
    """Refresh the view when it is older than `older_than_s` (0: always). Concurrent callers
    do not queue behind one another: whoever holds the lock refreshes, the others read what
    is there. A refresh that fails leaves the previous row and the transaction intact."""
    age = session.scalar(
        text("SELECT extract(epoch FROM now() - refreshed_at) FROM dashboard_stats")
    )
    if age is not None and float(age) < older_than_s:
        return False
    try:
        with session.begin_nested():
            locked = session.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": REFRESH_LOCK_KEY}
            )
            if not locked:
                return False
            session.execute(text("SELECT refresh_dashboard_stats()"))
    except SQLAlchemyError as error:
        log.warning("dashboard_stats not refreshed: %s", error)
        return False
    return True


@dataclass(frozen=True)
class LiveStats:
    at: datetime  # the database's now(): the instant the figures describe
    queued_by_model: dict[str, int] = field(default_factory=dict)
    queued_by_priority: dict[int, int] = field(default_factory=dict)
    running_by_model: dict[str, int] = field(default_factory=dict)
    # status -> {"nodes", "drained", "slots", "slots_busy"}
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    completed_1m: int = 0  # requests completed within THROUGHPUT_WINDOW
    completion_tokens_1m: int = 0  # their eval_count
    eval_duration_ns_1m: int = 0  # their eval_duration (time spent generating, per request)


def live_stats(*, session: Session) -> LiveStats:
    """Four aggregate queries, each over an index or a small table."""
    at: datetime = session.execute(select(func.now())).scalar_one()
    live = session.execute(
        select(
            InferenceRequest.status,
            InferenceRequest.model_name,
            InferenceRequest.priority,
            func.count(),
        )
        .where(InferenceRequest.status.in_([RequestStatus.QUEUED, RequestStatus.RUNNING]))
        .group_by(InferenceRequest.status, InferenceRequest.model_name, InferenceRequest.priority)
    ).all()
    nodes = session.execute(
        select(
            Node.status,
            func.count(),
            func.count().filter(Node.drained),
            func.coalesce(func.sum(Node.slots), 0),
            func.coalesce(func.sum(Node.slots_busy), 0),
        ).group_by(Node.status)
    ).all()
    completed, tokens, duration_ns = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(InferenceRequest.eval_count), 0),
            func.coalesce(func.sum(InferenceRequest.eval_duration), 0),
        ).where(
            InferenceRequest.status == RequestStatus.COMPLETED,
            InferenceRequest.completed_at >= func.now() - THROUGHPUT_WINDOW,
        )
    ).one()
    queued_by_model: dict[str, int] = {}
    queued_by_priority: dict[int, int] = {}
    running_by_model: dict[str, int] = {}
    for status, model, priority, count in live:
        if status == RequestStatus.QUEUED:
            queued_by_model[model] = queued_by_model.get(model, 0) + count
            queued_by_priority[priority] = queued_by_priority.get(priority, 0) + count
        else:
            running_by_model[model] = running_by_model.get(model, 0) + count
    return LiveStats(
        at=at,
        queued_by_model=queued_by_model,
        queued_by_priority=queued_by_priority,
        running_by_model=running_by_model,
        nodes={
            str(status): {
                "nodes": count,
                "drained": drained,
                "slots": int(slots),
                "slots_busy": int(busy),
            }
            for status, count, drained, slots, busy in nodes
        },
        completed_1m=int(completed),
        completion_tokens_1m=int(tokens or 0),
        eval_duration_ns_1m=int(duration_ns or 0),
    )


# The label of the users past the top N, summed; usernames start with a letter or a digit.
OTHER_USERS = "_other"
ERASED_USER = "_erased"  # jobs of accounts erased since (user_id NULL)


@dataclass(frozen=True)
class UserQueue:
    user: str  # a username, OTHER_USERS or ERASED_USER
    queued: int
    oldest_wait_s: float  # how long the longest-waiting of these jobs has waited
    mean_wait_s: float


def queue_by_user(*, session: Session, top: int) -> list[UserQueue]:
    """Waiting jobs per user: the `top` users with the most, by name, deepest first, then
    everyone else as one OTHER_USERS row (absent when there is nobody else): a bounded set
    of labels for /metrics however many users wait. One query over the waiting jobs'
    partial index."""
    waited = func.extract("epoch", func.now() - InferenceRequest.queued_at)
    rows = session.execute(
        select(
            User.username,
            func.count(),
            func.coalesce(func.max(waited), 0),
            func.coalesce(func.sum(waited), 0),
        )
        .select_from(InferenceRequest)
        .outerjoin(User, User.id == InferenceRequest.user_id)
        .where(InferenceRequest.status == RequestStatus.QUEUED)
        .group_by(User.username)
        .order_by(func.count().desc(), User.username)
    ).all()
    named = [
        UserQueue(name or ERASED_USER, int(n), float(oldest), float(total) / int(n))
        for name, n, oldest, total in rows[:top]
    ]
    rest = rows[top:]
    if rest:
        count = sum(int(row[1]) for row in rest)
        named.append(
            UserQueue(
                OTHER_USERS,
                count,
                max(float(row[2]) for row in rest),
                sum(float(row[3]) for row in rest) / count,
            )
        )
    return named
