"""The request state machine in SQL: claim, cancel, requeue, re-publish."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from db.inference import cancel, claim
from db.models import InferenceRequest
from db.recovery import requeue_expired_leases, undispatched
from tests.factories import InferenceRequestFactory

PAST = datetime.now(UTC) - timedelta(minutes=5)


def _running(**fields: object) -> InferenceRequest:
    return InferenceRequestFactory(
        status="running",
        worker_name="w",
        lease_until=PAST,
        started_at=PAST,
        output="partial",
        **fields,
    )


def test_a_claim_takes_a_queued_job_once(db_session: Session) -> None:
    job = InferenceRequestFactory()
    first = claim(
        executor=db_session,
        request_id=job.id,
        worker_name="a",
        node_id=None,
        lease=timedelta(seconds=30),
    )
    second = claim(
        executor=db_session,
        request_id=job.id,
        worker_name="b",
        node_id=None,
        lease=timedelta(seconds=30),
    )
    assert first is not None
    assert second is None


def test_cancel_in_one_statement(db_session: Session) -> None:
    queued, running = InferenceRequestFactory(), _running()
    done = InferenceRequestFactory(status="completed")
    assert cancel(session=db_session, request_id=queued.id) == "cancelled"
    assert cancel(session=db_session, request_id=running.id) == "running"
    assert cancel(session=db_session, request_id=done.id) is None


def test_an_expired_lease_requeues_with_the_next_attempt(db_session: Session) -> None:
    job = _running()
    [swept] = requeue_expired_leases(session=db_session, max_attempts=3)
    db_session.refresh(job)
    assert (swept.status, swept.attempt) == ("queued", 2)
    assert (job.status, job.attempt, job.output, job.worker_name) == ("queued", 2, None, None)


def test_a_cancel_asked_before_the_worker_died_is_honoured(db_session: Session) -> None:
    job = _running(cancel_requested_at=PAST)
    [swept] = requeue_expired_leases(session=db_session, max_attempts=3)
    db_session.refresh(job)
    assert swept.status == "cancelled"
    assert (job.status, job.output) == ("cancelled", "partial")
    assert (
        claim(
            executor=db_session,
            request_id=job.id,
            worker_name="x",
            node_id=None,
            lease=timedelta(seconds=30),
        )
        is None
    )


def test_a_job_that_kills_every_worker_fails(db_session: Session) -> None:
    job = _running(attempt=3)
    [swept] = requeue_expired_leases(session=db_session, max_attempts=3)
    db_session.refresh(job)
    assert swept.status == "failed"
    assert (job.status, job.error_code) == ("failed", "worker_lost")


def test_republish_covers_never_published_and_lost_messages(db_session: Session) -> None:
    never = InferenceRequestFactory(queued_at=PAST)
    lost = InferenceRequestFactory(queued_at=PAST, dispatched_at=PAST)
    fresh = InferenceRequestFactory(queued_at=PAST, dispatched_at=datetime.now(UTC))
    ids = {
        row[0]
        for row in undispatched(
            session=db_session, older_than=timedelta(seconds=10), lost_after=timedelta(minutes=1)
        )
    }
    assert never.id in ids
    assert lost.id in ids
    assert fresh.id not in ids
