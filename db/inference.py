"""A request's life in the database: submit, claim, lease, finish, requeue. Shared by web
and workers. Every state change is a compare-and-set, so a duplicate task, a late worker
or a sweeper racing a worker cannot both win."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import InferenceRequest, ModelUsageStats, RequestStatus

Dispatchable = list[tuple[uuid.UUID, str, int]]  # (request id, model, priority)


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job, read in the same statement that claimed it."""

    id: uuid.UUID
    kind: str
    model_name: str
    input: dict[str, Any]
    options: dict[str, Any]
    attempt: int
    queued_at: datetime
    started_at: datetime
    user_id: uuid.UUID | None  # events name the owner, so topic sockets can filter by it
    priority: int = 5


def find_by_idempotency_key(
    *, session: Session, user_id: uuid.UUID, key: str
) -> InferenceRequest | None:
    return session.scalar(
        select(InferenceRequest).where(
            InferenceRequest.user_id == user_id, InferenceRequest.idempotency_key == key
        )
    )


def claim(
    *,
    session: Session,
    request_id: uuid.UUID,
    worker_name: str,
    node_id: uuid.UUID | None,
    lease: timedelta,
) -> ClaimedJob | None:
    """queued -> running for this worker, or None if someone else has it (or it ended).

    Times come from the database's clock, never a worker's: leases set here are compared
    by a sweeper that may run on another host.
    """
    now = func.now()
    row = session.execute(
        update(InferenceRequest)
        .where(
            InferenceRequest.id == request_id,
            InferenceRequest.status == RequestStatus.QUEUED,
            InferenceRequest.cancel_requested_at.is_(None),
        )
        .values(
            status=RequestStatus.RUNNING,
            worker_name=worker_name,
            node_id=node_id,
            lease_until=now + lease,
            started_at=now,
            dispatched_at=func.coalesce(InferenceRequest.dispatched_at, now),
        )
        .returning(
            InferenceRequest.id,
            InferenceRequest.kind,
            InferenceRequest.model_name,
            InferenceRequest.input,
            InferenceRequest.options,
            InferenceRequest.attempt,
            InferenceRequest.queued_at,
            InferenceRequest.started_at,
            InferenceRequest.user_id,
            InferenceRequest.priority,
        )
    ).first()
    return ClaimedJob(*row) if row else None


def _ours(request_id: uuid.UUID, worker_name: str, attempt: int) -> Any:
    return (
        (InferenceRequest.id == request_id)
        & (InferenceRequest.status == RequestStatus.RUNNING)
        & (InferenceRequest.worker_name == worker_name)
        & (InferenceRequest.attempt == attempt)
    )


@dataclass(frozen=True)
class Renewal:
    ours: bool  # False: the job was swept or ended; stop working on it
    cancel_requested: bool


def renew_lease(
    *, session: Session, request_id: uuid.UUID, worker_name: str, attempt: int, lease: timedelta
) -> Renewal:
    """Extend our claim, and learn whether a cancel was asked for meanwhile (the row is the
    record of it, should the Redis signal have been lost)."""
    row = session.execute(
        update(InferenceRequest)
        .where(_ours(request_id, worker_name, attempt))
        .values(lease_until=func.now() + lease)
        .returning(InferenceRequest.cancel_requested_at)
    ).first()
    return Renewal(ours=row is not None, cancel_requested=bool(row and row[0]))


@dataclass(frozen=True)
class Outcome:
    status: RequestStatus
    output: str
    done_reason: str | None = None
    metrics: dict[str, int | None] | None = None
    output_message: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None


METRIC_COLUMNS = (
    "prompt_eval_count",
    "eval_count",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
)


def finish(
    *,
    session: Session,
    job: ClaimedJob,
    worker_name: str,
    outcome: Outcome,
    first_token_at: datetime | None = None,
) -> bool:
    """Write the result once, if the job is still ours; count it in the day's usage."""
    metrics = {name: (outcome.metrics or {}).get(name) for name in METRIC_COLUMNS}
    result = session.execute(
        update(InferenceRequest)
        .where(_ours(job.id, worker_name, job.attempt))
        .values(
            status=outcome.status,
            output=outcome.output,
            output_message=outcome.output_message,
            done_reason=outcome.done_reason,
            error=outcome.error,
            error_code=outcome.error_code,
            completed_at=func.now(),
            first_token_at=first_token_at,
            lease_until=None,
            **metrics,
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    record_usage(session=session, job=job, outcome=outcome, now=utcnow())
    return True


def record_usage(*, session: Session, job: ClaimedJob, outcome: Outcome, now: datetime) -> None:
    metrics = outcome.metrics or {}
    counts = {
        "requests": 1,
        "completed": int(outcome.status == RequestStatus.COMPLETED),
        "errors": int(outcome.status == RequestStatus.FAILED),
        "cancelled": int(outcome.status == RequestStatus.CANCELLED),
        "prompt_tokens": int(metrics.get("prompt_eval_count") or 0),
        "completion_tokens": int(metrics.get("eval_count") or 0),
        "total_duration_ns": int(metrics.get("total_duration") or 0),
        "queue_wait_ms": int((job.started_at - job.queued_at).total_seconds() * 1000),
    }
    statement = insert(ModelUsageStats).values(model_name=job.model_name, day=now.date(), **counts)
    table = ModelUsageStats.__table__
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["model_name", "day"],
            set_={name: table.c[name] + statement.excluded[name] for name in counts}
            | {"updated_at": now},
        )
    )


def cancel(*, session: Session, request_id: uuid.UUID) -> str | None:
    """One statement for both cases: a queued job becomes `cancelled` at once; a running one
    is marked, and its worker stops it. Returns the status after the change ("cancelled" or
    "running"), or None if the job had already ended."""
    was_queued = InferenceRequest.status == RequestStatus.QUEUED
    row = session.execute(
        update(InferenceRequest)
        .where(
            InferenceRequest.id == request_id,
            InferenceRequest.status.in_([RequestStatus.QUEUED, RequestStatus.RUNNING]),
        )
        .values(
            status=case((was_queued, RequestStatus.CANCELLED), else_=InferenceRequest.status),
            completed_at=case((was_queued, func.now()), else_=InferenceRequest.completed_at),
            done_reason=case((was_queued, "cancelled"), else_=InferenceRequest.done_reason),
            cancel_requested_at=func.now(),
        )
        .returning(InferenceRequest.status)
    ).first()
    return str(row[0]) if row else None


@dataclass(frozen=True)
class Requeued:
    request_id: uuid.UUID
    model_name: str
    priority: int
    status: str  # queued again, or cancelled / failed instead
    attempt: int
    user_id: uuid.UUID | None


def hand_back(*, session: Session, job: ClaimedJob, worker_name: str) -> str | None:
    """A stopping worker returns a job it still runs to the queue: attempt + 1 (readers drop
    the text streamed so far), partial output dropped. A job whose cancel was asked for
    meanwhile ends `cancelled` instead (the claim would never take it again). Returns the new
    status, or None if the job is no longer ours."""
    cancelled = InferenceRequest.cancel_requested_at.is_not(None)
    row = session.execute(
        update(InferenceRequest)
        .where(_ours(job.id, worker_name, job.attempt))
        .values(
            status=case((cancelled, RequestStatus.CANCELLED), else_=RequestStatus.QUEUED),
            attempt=case((cancelled, InferenceRequest.attempt), else_=InferenceRequest.attempt + 1),
            output=case((cancelled, InferenceRequest.output), else_=None),
            completed_at=case((cancelled, func.now()), else_=None),
            worker_name=None,
            node_id=None,
            lease_until=None,
            started_at=case((cancelled, InferenceRequest.started_at), else_=None),
            first_token_at=None,
            dispatched_at=None,
        )
        .returning(InferenceRequest.status)
    ).first()
    return str(row[0]) if row else None


def requeue_expired_leases(
    *, session: Session, max_attempts: int, limit: int = 100
) -> list[Requeued]:
    """Running jobs whose worker stopped renewing its lease go back to the queue with
    attempt + 1 and their partial output dropped, unless a cancel was asked for (they end
    `cancelled`) or they have used up `max_attempts` (they end `failed`)."""
    expired = (
        select(InferenceRequest.id)
        .where(
            InferenceRequest.status == RequestStatus.RUNNING,
            InferenceRequest.lease_until < func.now(),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    cancelled = InferenceRequest.cancel_requested_at.is_not(None)
    exhausted = InferenceRequest.attempt >= max_attempts
    new_status = case(
        (cancelled, RequestStatus.CANCELLED),
        (exhausted, RequestStatus.FAILED),
        else_=RequestStatus.QUEUED,
    )
    ends = cancelled | exhausted
    rows = session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id.in_(expired))
        .values(
            status=new_status,
            attempt=case((ends, InferenceRequest.attempt), else_=InferenceRequest.attempt + 1),
            error=case(
                (~cancelled & exhausted, "its worker was lost on every attempt"),
                else_=InferenceRequest.error,
            ),
            error_code=case((~cancelled & exhausted, "worker_lost"), else_=None),
            completed_at=case((ends, func.now()), else_=None),
            output=case((ends, InferenceRequest.output), else_=None),
            worker_name=None,
            node_id=None,
            lease_until=None,
            started_at=case((ends, InferenceRequest.started_at), else_=None),
            first_token_at=None,
            dispatched_at=None,
        )
        .returning(
            InferenceRequest.id,
            InferenceRequest.model_name,
            InferenceRequest.priority,
            InferenceRequest.status,
            InferenceRequest.attempt,
            InferenceRequest.user_id,
        )
    ).all()
    return [Requeued(row[0], row[1], row[2], str(row[3]), row[4], row[5]) for row in rows]


def undispatched(
    *, session: Session, older_than: timedelta, lost_after: timedelta, limit: int = 500
) -> Dispatchable:
    """Queued jobs to publish (again): never handed to the broker (it was down), or handed
    over so long ago that the message was probably lost (a broker restart without
    persistence, a task that died before its claim). A duplicate is harmless: the claim
    takes a job once."""
    now = func.now()
    never = InferenceRequest.dispatched_at.is_(None) & (
        InferenceRequest.queued_at < now - older_than
    )
    long_ago = InferenceRequest.dispatched_at < now - lost_after
    rows = session.execute(
        select(InferenceRequest.id, InferenceRequest.model_name, InferenceRequest.priority)
        .where(InferenceRequest.status == RequestStatus.QUEUED, never | long_ago)
        .order_by(InferenceRequest.queued_at)
        .limit(limit)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def mark_dispatched(*, session: Session, request_ids: list[uuid.UUID]) -> None:
    """Record a (re-)publish; the lost-message clock starts again."""
    session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id.in_(request_ids))
        .values(dispatched_at=func.now())
    )
