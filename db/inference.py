"""A request's life in the database: submit, claim, lease, finish, requeue. Shared by web
and workers. Every state change is a compare-and-set, so a duplicate task, a late worker
or a sweeper racing a worker cannot both win."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import InferenceRequest, ModelUsageStats, RequestStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    """queued -> running for this worker, or None if someone else has it (or it ended)."""
    now = utcnow()
    row = session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id == request_id, InferenceRequest.status == RequestStatus.QUEUED)
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


def renew_lease(
    *, session: Session, request_id: uuid.UUID, worker_name: str, attempt: int, lease: timedelta
) -> bool:
    """Extend our claim; False means the job is no longer ours (swept, cancelled)."""
    result = session.execute(
        update(InferenceRequest)
        .where(_ours(request_id, worker_name, attempt))
        .values(lease_until=utcnow() + lease)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_first_token(*, session: Session, request_id: uuid.UUID) -> None:
    session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id == request_id, InferenceRequest.first_token_at.is_(None))
        .values(first_token_at=utcnow())
    )


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
    now = utcnow()
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
            completed_at=now,
            first_token_at=first_token_at,
            lease_until=None,
            **metrics,
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    record_usage(session=session, job=job, outcome=outcome, now=now)
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


def cancel_queued(*, session: Session, request_id: uuid.UUID) -> bool:
    """queued -> cancelled; the job never reaches an engine."""
    now = utcnow()
    result = session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id == request_id, InferenceRequest.status == RequestStatus.QUEUED)
        .values(
            status=RequestStatus.CANCELLED,
            cancel_requested_at=now,
            completed_at=now,
            done_reason="cancelled",
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def request_cancel(*, session: Session, request_id: uuid.UUID) -> bool:
    """Mark a running job for cancellation; its worker stops it between chunks."""
    result = session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id == request_id, InferenceRequest.status == RequestStatus.RUNNING)
        .values(cancel_requested_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def requeue_expired_leases(
    *, session: Session, limit: int = 100
) -> list[tuple[uuid.UUID, str, int]]:
    """Running jobs whose worker stopped renewing go back to the queue, attempt + 1, with the
    partial output dropped. Returns (id, model, priority) for re-publishing."""
    expired = (
        select(InferenceRequest.id)
        .where(
            InferenceRequest.status == RequestStatus.RUNNING,
            InferenceRequest.lease_until < utcnow(),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id.in_(expired))
        .values(
            status=RequestStatus.QUEUED,
            attempt=InferenceRequest.attempt + 1,
            worker_name=None,
            node_id=None,
            lease_until=None,
            started_at=None,
            first_token_at=None,
            output=None,
            dispatched_at=None,
        )
        .returning(InferenceRequest.id, InferenceRequest.model_name, InferenceRequest.priority)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def undispatched(
    *, session: Session, older_than: timedelta, limit: int = 500
) -> list[tuple[uuid.UUID, str, int]]:
    """Queued jobs that never reached the broker (it was down when they were accepted)."""
    rows = session.execute(
        select(InferenceRequest.id, InferenceRequest.model_name, InferenceRequest.priority)
        .where(
            InferenceRequest.status == RequestStatus.QUEUED,
            InferenceRequest.dispatched_at.is_(None),
            InferenceRequest.queued_at < utcnow() - older_than,
        )
        .order_by(InferenceRequest.queued_at)
        .limit(limit)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def mark_dispatched(*, session: Session, request_ids: list[uuid.UUID]) -> None:
    session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id.in_(request_ids), InferenceRequest.dispatched_at.is_(None))
        .values(dispatched_at=utcnow())
    )
