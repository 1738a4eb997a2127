"""Completion webhooks: one delivery per job that ended with a webhook URL, every attempt
made for it, and each account's signing secret (docs/webhooks.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, UUIDPrimaryKey, check_in


class DeliveryState(StrEnum):
    PENDING = "pending"  # due at next_attempt_at (an attempt in flight pushes it forward)
    DELIVERED = "delivered"  # a 2xx answered
    GAVE_UP = "gave_up"  # the retry window ran out, or there was no one left to sign for


class WebhookDelivery(UUIDPrimaryKey, Base):
    """The message for one job's terminal status. Written by the trigger on
    inference_requests (migration 0005), never by the hot path's code: a job without a
    webhook costs nothing, and every way a job ends (worker, cancel, sweeper) is covered.
    Its id is the Standard Webhooks `webhook-id`, the same on every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(check_in("state", tuple(DeliveryState)), name="state"),
        Index("ix_webhook_deliveries_request_id", "request_id"),
        # The deliverer's queue: small, scanned at every wake-up.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=sql_text("state = 'pending'"),
        ),
    )

    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("inference_requests.id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(String(2048))
    event: Mapped[str] = mapped_column(String(32))  # inference.completed / failed / cancelled
    state: Mapped[str] = mapped_column(
        String(16), default=DeliveryState.PENDING, server_default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Retries stop this long after the window opened (the job's end, or a redeliver).
    window_started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(UUIDPrimaryKey, Base):
    """One POST of a delivery, as it went."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id", "delivery_id", "attempted_at"),)

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)  # None: no answer (see error)
    error: Mapped[str | None] = mapped_column(Text)


class WebhookSecret(Base):
    """An account's signing secret (`whsec_<base64>`). Kept apart from the account's row so
    that no read of users (exports, admin listings, the audit trail) can carry it; stored as
    is, since signing needs it (like any HMAC key). Made on first use, rotated by its owner."""

    __tablename__ = "webhook_secrets"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
