"""Inference jobs, from submission to their stored result, and per-model daily usage."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, Timestamps, UUIDPrimaryKey, check_in


class RequestStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED}
)


class RequestKind(StrEnum):
    CHAT = "chat"
    GENERATE = "generate"
    EMBED = "embed"  # its vectors are stored in output_message["embeddings"]


class InferenceRequest(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "inference_requests"
    __table_args__ = (
        CheckConstraint(check_in("status", tuple(RequestStatus)), name="status"),
        CheckConstraint(check_in("kind", tuple(RequestKind)), name="kind"),
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority_range"),
        CheckConstraint("attempt >= 1", name="attempt_positive"),
        # A user's request history, newest first.
        Index("ix_inference_requests_user_id_created_at", "user_id", text("created_at DESC")),
        Index("ix_inference_requests_model_name_created_at", "model_name", "created_at"),
        Index("ix_inference_requests_created_at", "created_at"),
        # The live set: small, scanned by dispatch, stats and the sweepers.
        Index(
            "ix_inference_requests_status_live",
            "status",
            "priority",
            "queued_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # Expired-lease sweeper.
        Index(
            "ix_inference_requests_lease_until_running",
            "lease_until",
            postgresql_where=text("status = 'running'"),
        ),
        # Outbox sweeper: accepted but never handed to the broker.
        Index(
            "ix_inference_requests_undispatched",
            "queued_at",
            postgresql_where=text("status = 'queued' AND dispatched_at IS NULL"),
        ),
        Index(
            "ix_inference_requests_node_id_running",
            "node_id",
            postgresql_where=text("status = 'running'"),
        ),
        Index(
            "uq_inference_requests_user_id_idempotency_key",
            "user_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # Quotas count a user's and a key's live jobs (web/inference/quotas.py).
        Index(
            "ix_inference_requests_user_id_live",
            "user_id",
            "status",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        Index(
            "ix_inference_requests_api_key_id_live",
            "api_key_id",
            "status",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # The fair claim (fair_claim(), migration 0008): a model's waiting jobs, by owner,
        # and its starts by owner and time (jobs of erased accounts under one owner, as the
        # pick groups them; docs/pipeline.md, "Fair share").
        Index(
            "ix_inference_requests_model_queued",
            "model_name",
            "user_id",
            "priority",
            "queued_at",
            postgresql_where=text("status = 'queued'"),
        ),
        Index(
            "ix_inference_requests_model_owner_started",
            "model_name",
            text("coalesce(user_id, '00000000-0000-0000-0000-000000000000'::uuid)"),
            "started_at",
            postgresql_where=text("started_at IS NOT NULL"),
        ),
        # Retention cleanup of finished requests.
        Index(
            "ix_inference_requests_completed_at",
            "completed_at",
            postgresql_where=text("completed_at IS NOT NULL"),
        ),
    )

    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # The API key it came with (None: a login's token); the key's quotas count it.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    # How many of its owner's (and its key's) jobs may run at once, fixed when it was
    # accepted; None: no limit. A worker claims it only below both (db/inference.py).
    running_cap: Mapped[int | None] = mapped_column(Integer)
    key_running_cap: Mapped[int | None] = mapped_column(Integer)
    # Requests keep the name they asked for; the model row may come and go.
    model_name: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))
    # Which front door took it: our API, the Ollama-compatible or the OpenAI-compatible one.
    source: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    input: Mapped[dict[str, Any]] = mapped_column(JSONB)
    options: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'")
    )
    priority: Mapped[int] = mapped_column(SmallInteger, default=5, server_default=text("5"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # Hash of the submitted body: the same key with another body is a conflict.
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Where its terminal status is POSTed (docs/webhooks.md); the trigger of migration 0005
    # queues the delivery when the status becomes terminal.
    webhook_url: Mapped[str | None] = mapped_column(String(2048))

    status: Mapped[str] = mapped_column(
        String(16), default=RequestStatus.QUEUED, server_default=RequestStatus.QUEUED
    )
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    node_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"))
    worker_name: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    output: Mapped[str | None] = mapped_column(Text)
    # Chat results that are more than text (tool calls, thinking) as the engine gave them.
    output_message: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    done_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_eval_count: Mapped[int | None] = mapped_column(Integer)
    eval_count: Mapped[int | None] = mapped_column(Integer)
    total_duration: Mapped[int | None] = mapped_column(BigInteger)
    load_duration: Mapped[int | None] = mapped_column(BigInteger)
    prompt_eval_duration: Mapped[int | None] = mapped_column(BigInteger)
    eval_duration: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))

    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    first_token_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelUsageStats(Base):
    """Per model and day aggregates; kept when requests are cleaned up or users erased."""

    __tablename__ = "model_usage_stats"
    __table_args__ = (Index("ix_model_usage_stats_day", "day"),)

    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    completed: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    errors: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    cancelled: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # Sums, so averages stay exact when rows are merged: avg = sum / completed.
    total_duration_ns: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    queue_wait_ms: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class UserTokenUsage(Base):
    """Tokens (prompt + completion) each user's jobs spent per UTC day: the daily token quota
    reads it. Written by the same statement that stores a job's result."""

    __tablename__ = "user_token_usage"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    jobs: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class ApiKeyTokenUsage(Base):
    """The same per API key, for a key's own daily token quota."""

    __tablename__ = "api_key_token_usage"

    api_key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    jobs: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
