"""Recovering jobs in the database: a stopping worker hands one back, the sweepers requeue
jobs whose lease ran out and find queued jobs the broker never got (or lost), and dispatch
marks record what was published. Every change is a compare-and-set, like db/inference.py's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, false, func, select, update
from sqlalchemy.orm import Session

from db.inference import ClaimedJob, ours
from db.models import InferenceRequest, RequestStatus

Dispatchable = list[tuple[uuid.UUID, str, int]]  # (request id, model, priority)


def undo_dispatch(*, session: Session, request_id: uuid.UUID) -> None:
    """The publish after the insert failed: leave the job to the outbox sweeper."""
    session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id == request_id, InferenceRequest.status == RequestStatus.QUEUED)
        .values(dispatched_at=None)
    )


@dataclass(frozen=True)
class Requeued:
    request_id: uuid.UUID
    model_name: str
    priority: int
    status: str  # queued again, or cancelled / failed instead
    attempt: int
    user_id: uuid.UUID | None


def _requeued_unless_ended(
    exhausted: ColumnElement[bool],
    error: str | None,
    error_code: str | None,
    error_code_otherwise: Any,
) -> dict[str, Any]:
    """The new values of a running job going back to the queue: attempt + 1 (readers drop
    the text streamed so far), partial output dropped, no worker. Unless it ends instead:
    `cancelled` when a cancel was asked for (the claim would never take it again), `failed`
    with `error` and `error_code` when `exhausted`."""
    cancelled = InferenceRequest.cancel_requested_at.is_not(None)
    ends = cancelled | exhausted
    fails = ~cancelled & exhausted
    return {
        "status": case(
            (cancelled, RequestStatus.CANCELLED),
            (exhausted, RequestStatus.FAILED),
            else_=RequestStatus.QUEUED,
        ),
        "attempt": case((ends, InferenceRequest.attempt), else_=InferenceRequest.attempt + 1),
        "output": case((ends, InferenceRequest.output), else_=None),
        "error": case((fails, error), else_=InferenceRequest.error),
        "error_code": case((fails, error_code), else_=error_code_otherwise),
        "completed_at": case((ends, func.now()), else_=None),
        "worker_name": None,
        "node_id": None,
        "lease_until": None,
        "started_at": case((ends, InferenceRequest.started_at), else_=None),
        "first_token_at": None,
        "dispatched_at": None,
    }


def hand_back(
    *,
    session: Session,
    job: ClaimedJob,
    worker_name: str,
    max_attempts: int | None = None,
    error: str | None = None,
    error_code: str | None = None,
) -> str | None:
    """A worker returns a job it runs to the queue (it is stopping, or it cannot run it
    now), or ends it (`_requeued_unless_ended`): with `max_attempts`, one on its last
    attempt fails with `error`. Returns the new status, or None if the job is no longer
    ours."""
    exhausted = InferenceRequest.attempt >= max_attempts if max_attempts is not None else false()
    row = session.execute(
        update(InferenceRequest)
        .where(ours(job.id, worker_name, job.attempt))
        .values(**_requeued_unless_ended(exhausted, error, error_code, InferenceRequest.error_code))
        .returning(InferenceRequest.status)
    ).first()
    return str(row[0]) if row else None


def requeue_expired_leases(
    *, session: Session, max_attempts: int, limit: int = 100
) -> list[Requeued]:
    """Running jobs whose worker stopped renewing its lease go back to the queue, unless a
    cancel was asked for or they have used up `max_attempts` (`_requeued_unless_ended`)."""
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
    lost = "its worker was lost on every attempt"
    rows = session.execute(
        update(InferenceRequest)
        .where(InferenceRequest.id.in_(expired))
        .values(
            **_requeued_unless_ended(
                InferenceRequest.attempt >= max_attempts, lost, "worker_lost", None
            )
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
