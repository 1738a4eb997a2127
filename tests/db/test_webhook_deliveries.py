"""The webhook trigger and queue in SQL: every way a job ends queues one delivery (and only
for a job with a webhook URL), and the deliverer's claim, record and redeliver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.inference import cancel
from db.models import InferenceRequest, WebhookAttempt, WebhookDelivery
from db.recovery import requeue_expired_leases
from db.webhooks import (
    Attempted,
    claim_due,
    deliveries_of,
    record_attempt,
    redeliver,
    rotate_secret,
    secret_of,
)
from tests.factories import InferenceRequestFactory, UserFactory

URL = "https://hooks.example.com/done"
PAST = datetime.now(UTC) - timedelta(minutes=5)
HOLD = timedelta(seconds=60)


def _deliveries(session: Session, job: InferenceRequest) -> list[WebhookDelivery]:
    session.flush()
    return list(
        session.scalars(select(WebhookDelivery).where(WebhookDelivery.request_id == job.id))
    )


def test_a_cancelled_queued_job_queues_its_delivery(db_session: Session) -> None:
    job = InferenceRequestFactory(webhook_url=URL)
    assert _deliveries(db_session, job) == []
    cancel(session=db_session, request_id=job.id)
    [delivery] = _deliveries(db_session, job)
    assert (delivery.event, delivery.url, delivery.state) == ("inference.cancelled", URL, "pending")


def test_a_job_the_sweeper_fails_queues_its_delivery(db_session: Session) -> None:
    job = InferenceRequestFactory(
        webhook_url=URL, status="running", worker_name="w", lease_until=PAST, attempt=3
    )
    requeue_expired_leases(session=db_session, max_attempts=3)
    db_session.refresh(job)
    assert job.status == "failed"
    assert [d.event for d in _deliveries(db_session, job)] == ["inference.failed"]


def test_only_a_terminal_transition_of_a_job_with_a_webhook_queues_one(db_session: Session) -> None:
    plain = InferenceRequestFactory()
    hooked = InferenceRequestFactory(webhook_url=URL)
    for job in (plain, hooked):
        for status in ("running", "completed"):
            db_session.execute(
                update(InferenceRequest).where(InferenceRequest.id == job.id).values(status=status)
            )
    # An update of a finished job that leaves it finished queues nothing more.
    db_session.execute(
        update(InferenceRequest).where(InferenceRequest.id == hooked.id).values(status="failed")
    )
    assert _deliveries(db_session, plain) == []
    assert [d.event for d in _deliveries(db_session, hooked)] == ["inference.completed"]


def test_claim_record_and_redeliver(db_session: Session) -> None:
    job = InferenceRequestFactory(webhook_url=URL, user_id=UserFactory().id)
    cancel(session=db_session, request_id=job.id)
    db_session.flush()
    [due] = claim_due(session=db_session, limit=10, hold=HOLD)
    assert claim_due(session=db_session, limit=10, hold=HOLD) == []  # held by the first
    failed = Attempted(datetime.now(UTC), 12, 500, "the receiver answered 500")
    assert record_attempt(session=db_session, due=due, attempted=failed, retry_in=timedelta(0)) == (
        "pending"
    )
    # A second record of the same attempt (a stale deliverer) leaves the state alone.
    assert record_attempt(session=db_session, due=due, attempted=failed, retry_in=None) == "stale"
    [again] = claim_due(session=db_session, limit=10, hold=HOLD)
    done = Attempted(datetime.now(UTC), 8, 204, None)
    assert record_attempt(session=db_session, due=again, attempted=done, retry_in=None) == (
        "delivered"
    )
    [log] = deliveries_of(session=db_session, request_id=job.id)
    assert log["attempts"] == 2
    assert [a["status_code"] for a in log["attempt_log"]] == [500, 500, 204]
    assert log["delivered_at"] is not None

    assert redeliver(session=db_session, request_id=job.id) == 1
    [redue] = claim_due(session=db_session, limit=10, hold=HOLD)
    assert redue.id == again.id  # the same message: its webhook-id does not change
    assert db_session.scalar(select(WebhookAttempt.id).limit(1)) is not None


def test_a_secret_is_made_once_and_rotated(db_session: Session) -> None:
    user = UserFactory()
    first = secret_of(session=db_session, user_id=user.id)
    assert first.startswith("whsec_")
    assert secret_of(session=db_session, user_id=user.id) == first
    rotated = rotate_secret(session=db_session, user_id=user.id)
    assert rotated != first
    assert secret_of(session=db_session, user_id=user.id) == rotated
