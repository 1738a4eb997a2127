"""Schemas for completion webhooks: a job's delivery log, redelivery, the signing secret."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class WebhookAttemptRead(BaseModel):
    attempted_at: datetime
    duration_ms: int
    status_code: int | None = Field(description="None: no answer (see error).")
    error: str | None


class WebhookDeliveryRead(BaseModel):
    id: uuid.UUID = Field(description="The message's `webhook-id` (with the `msg_` prefix, hex).")
    event: Literal["inference.completed", "inference.failed", "inference.cancelled"]
    url: str
    state: Literal["pending", "delivered", "gave_up"]
    attempts: int
    created_at: datetime
    window_started_at: datetime = Field(description="Retries stop WEBHOOK_RETRY_WINDOW_S after.")
    next_attempt_at: datetime | None = Field(description="When pending: the next try.")
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    attempt_log: list[WebhookAttemptRead]


class WebhookLog(BaseModel):
    request_id: uuid.UUID
    webhook_url: str | None
    deliveries: list[WebhookDeliveryRead] = Field(
        description="Empty until the job ends (or when it has no webhook)."
    )


class Redelivered(BaseModel):
    request_id: uuid.UUID
    deliveries: int = Field(description="How many deliveries were made due now.")


class WebhookSecretRead(BaseModel):
    secret: str = Field(
        description="`whsec_` + base64: the key of every signature of the account's webhooks."
    )
