"""Completion webhooks in the database: the deliverer's queue (claim what is due, record an
attempt), the delivery log its owner reads, redelivery, and each account's signing secret.
Deliveries are created by the trigger of migration 0005, never here (docs/webhooks.md)."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import DeliveryState, WebhookAttempt, WebhookDelivery, WebhookSecret

NOTIFY_CHANNEL = "omx_webhooks"  # the trigger NOTIFYs it; the deliverer LISTENs


@dataclass(frozen=True)
class Due:
    """A delivery taken by one deliverer for one attempt."""

    id: uuid.UUID
    request_id: uuid.UUID
    url: str
    event: str
    attempts: int  # made before this one: the record of this one is fenced by it
    window_started_at: datetime


@dataclass(frozen=True)
class Attempted:
    """How one POST went."""

    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# The claim pushes next_attempt_at past the longest an attempt can take, so another
# deliverer (or this one, restarted) takes it again only if this attempt was lost.
_CLAIM = text(
    """
    UPDATE webhook_deliveries AS d SET next_attempt_at = now() + :hold
    FROM (
        SELECT id FROM webhook_deliveries
        WHERE state = 'pending' AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE d.id = due.id
    RETURNING d.id, d.request_id, d.url, d.event, d.attempts, d.window_started_at
    """
)


def claim_due(*, session: Session, limit: int, hold: timedelta) -> list[Due]:
    """Take up to `limit` deliveries that are due, for one attempt each."""
    rows = session.execute(_CLAIM, {"limit": limit, "hold": hold}).all()
    return [Due(*row) for row in rows]


def seconds_until_due(*, session: Session) -> float | None:
    """How long until the next pending delivery is due (0 if one is); None: none pending."""
    wait = session.scalar(
        select(func.extract("epoch", func.min(WebhookDelivery.next_attempt_at) - func.now())).where(
            WebhookDelivery.state == DeliveryState.PENDING
        )
    )
    return None if wait is None else max(0.0, float(wait))


def record_attempt(
    *, session: Session, due: Due, attempted: Attempted, retry_in: timedelta | None
) -> str:
    """Log the attempt and move the delivery on: delivered, due again in `retry_in`, or
    given up (`retry_in` None). Returns the state written, or "stale" when the delivery
    changed under this attempt (a redeliver, another deliverer's record): the attempt is
    logged all the same, the state is left to whoever moved it."""
    session.add(
        WebhookAttempt(
            delivery_id=due.id,
            attempted_at=attempted.attempted_at,
            duration_ms=attempted.duration_ms,
            status_code=attempted.status_code,
            error=attempted.error,
        )
    )
    if attempted.delivered:
        state, next_at, delivered_at = DeliveryState.DELIVERED, None, func.now()
    elif retry_in is None:
        state, next_at, delivered_at = DeliveryState.GAVE_UP, None, None
    else:
        state, next_at, delivered_at = DeliveryState.PENDING, func.now() + retry_in, None
    moved = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == due.id,
            WebhookDelivery.attempts == due.attempts,
            WebhookDelivery.state == DeliveryState.PENDING,
        )
        .values(
            attempts=WebhookDelivery.attempts + 1,
            state=state,
            next_attempt_at=next_at,
            delivered_at=delivered_at,
            last_status_code=attempted.status_code,
            last_error=attempted.error,
        )
        .returning(WebhookDelivery.id)
    ).first()
    return str(state) if moved else "stale"


def give_up(*, session: Session, due: Due, reason: str) -> None:
    """End a delivery that can never be made (its job or its owner is gone)."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == due.id, WebhookDelivery.state == DeliveryState.PENDING)
        .values(state=DeliveryState.GAVE_UP, next_attempt_at=None, last_error=reason)
    )


def deliveries_of(*, session: Session, request_id: uuid.UUID) -> list[dict[str, Any]]:
    """A job's delivery log: each delivery with its attempts, oldest first."""
    deliveries = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.request_id == request_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ).all()
    attempts = session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_([d.id for d in deliveries]))
        .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
    ).all()
    log = []
    for delivery in deliveries:
        row = {c.key: getattr(delivery, c.key) for c in WebhookDelivery.__table__.columns}
        row["attempt_log"] = [
            {c.key: getattr(a, c.key) for c in WebhookAttempt.__table__.columns}
            for a in attempts
            if a.delivery_id == delivery.id
        ]
        log.append(row)
    return log


def redeliver(*, session: Session, request_id: uuid.UUID) -> int:
    """Make each of the job's deliveries due now, with a fresh retry window, whatever their
    state; the deliverer is woken at commit. Returns how many there were."""
    rows = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.request_id == request_id)
        .values(
            state=DeliveryState.PENDING,
            next_attempt_at=func.now(),
            window_started_at=func.now(),
        )
        .returning(WebhookDelivery.id)
    ).all()
    if rows:
        session.execute(select(func.pg_notify(NOTIFY_CHANNEL, "")))
    return len(rows)


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_of(*, session: Session, user_id: uuid.UUID) -> str:
    """The account's signing secret, made on first use (two first uses agree on one)."""
    session.execute(
        insert(WebhookSecret)
        .values(user_id=user_id, secret=new_secret())
        .on_conflict_do_nothing(index_elements=["user_id"])
    )
    secret: str = session.scalars(
        select(WebhookSecret.secret).where(WebhookSecret.user_id == user_id)
    ).one()
    return secret


def rotate_secret(*, session: Session, user_id: uuid.UUID) -> str:
    """Replace the account's signing secret; deliveries from now on are signed with the new
    one."""
    secret = new_secret()
    statement = insert(WebhookSecret).values(user_id=user_id, secret=secret)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["user_id"], set_={"secret": secret, "created_at": func.now()}
        )
    )
    return secret
