"""What an account (and one of its keys) uses of its quotas now: live jobs and today's
tokens. The quotas themselves are enforced in db/inference.py's admit and claim
statements; this is for explaining a refusal and for the usage API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import ApiKeyTokenUsage, InferenceRequest, RequestStatus, UserTokenUsage


@dataclass(frozen=True)
class Usage:
    queued: int = 0
    running: int = 0
    tokens_today: int = 0
    jobs_today: int = 0
    key_queued: int = 0  # of these, what came with the key asked about
    key_running: int = 0
    key_tokens_today: int = 0


def usage_of(
    *, session: Session, user_id: uuid.UUID, api_key_id: uuid.UUID | None, day: date
) -> Usage:
    status = InferenceRequest.status
    with_key = InferenceRequest.api_key_id == api_key_id
    live = session.execute(
        select(
            func.count().filter(status == RequestStatus.QUEUED),
            func.count().filter(status == RequestStatus.RUNNING),
            func.count().filter(status == RequestStatus.QUEUED, with_key),
            func.count().filter(status == RequestStatus.RUNNING, with_key),
        ).where(
            InferenceRequest.user_id == user_id,
            status.in_([RequestStatus.QUEUED, RequestStatus.RUNNING]),
        )
    ).one()
    mine = session.execute(
        select(UserTokenUsage.tokens, UserTokenUsage.jobs).where(
            UserTokenUsage.user_id == user_id, UserTokenUsage.day == day
        )
    ).first()
    key_tokens = (
        session.scalar(
            select(ApiKeyTokenUsage.tokens).where(
                ApiKeyTokenUsage.api_key_id == api_key_id, ApiKeyTokenUsage.day == day
            )
        )
        if api_key_id is not None
        else None
    )
    return Usage(
        queued=live[0],
        running=live[1],
        tokens_today=mine[0] if mine else 0,
        jobs_today=mine[1] if mine else 0,
        key_queued=live[2],
        key_running=live[3],
        key_tokens_today=key_tokens or 0,
    )
