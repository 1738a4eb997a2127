"""Quotas: how much of the fleet one caller may hold at once and spend in a day.

Four per account, each a run-time default for plain users (operators and admins have none
unless an admin sets the account's own), which an admin may override per account
(PUT /api/v1/users/<id>/quotas) and an API key's owner may narrow per key:

- max_queued_jobs: jobs waiting at once; one more is refused (429 `quota_queued_jobs`).
- max_running_jobs: jobs running at once; the others wait their turn in the queue.
- tokens_per_day: prompt + completion tokens per UTC day; past it a job is refused (429
  `quota_tokens_per_day`, Retry-After: the next midnight UTC). A job admitted below the
  line may end past it: tokens are counted when a job ends.
- max_websockets: sockets open at once (web/realtime/seats.py; 429 `quota_websockets`).

0 means no limit. The database enforces the job quotas in the statements that admit and
claim a job (db/inference.py), so they hold across every web process and worker. A key may
also cap the priority of its jobs (max_priority). docs/security.md has the table.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from config.runtime import RuntimeConfig
from db.inference import Admission
from db.models import Role
from db.quotas import Usage, usage_of
from web.errors import TooManyRequests
from web.security.principal import Principal

QUOTAS = ("max_queued_jobs", "max_running_jobs", "tokens_per_day", "max_websockets")
KEY_LIMITS = (*QUOTAS, "max_priority")
# How long a caller refused for waiting jobs is told to wait: about one job's run.
QUEUED_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Limits:
    """One set of quotas; None: no limit."""

    max_queued_jobs: int | None = None
    max_running_jobs: int | None = None
    tokens_per_day: int | None = None
    max_websockets: int | None = None


def _limit(value: int | None) -> int | None:
    return value if value else None  # 0 and absent alike: no limit


def account_limits(role: str, own: dict[str, int], config: RuntimeConfig) -> Limits:
    """An account's quotas: its own where an admin set them, else the run-time defaults for
    plain users (none for operators and admins)."""

    def default(name: str) -> int:
        return int(getattr(config, f"quota_{name}")) if role == Role.USER else 0

    return Limits(**{name: _limit(own.get(name, default(name))) for name in QUOTAS})


def key_limits(principal: Principal) -> Limits:
    """The narrower limits of the API key the caller used (none for a login's token)."""
    return Limits(**{name: _limit(principal.key_limits.get(name)) for name in QUOTAS})


def caller_limits(principal: Principal, config: RuntimeConfig) -> tuple[Limits, Limits]:
    return account_limits(principal.role, dict(principal.quotas), config), key_limits(principal)


def today() -> date:
    return datetime.now(UTC).date()


def admission(principal: Principal, config: RuntimeConfig) -> Admission:
    mine, key = caller_limits(principal, config)
    return Admission(
        day=today(),
        max_queued_jobs=mine.max_queued_jobs,
        key_max_queued_jobs=key.max_queued_jobs,
        tokens_per_day=mine.tokens_per_day,
        key_tokens_per_day=key.tokens_per_day,
    )


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, int((midnight - now).total_seconds()) + 1)


def refuse_if_over(*, session: Session, principal: Principal, config: RuntimeConfig) -> None:
    """After an insert took nothing: raise the 429 of the first quota the caller is at, if
    any (off the hot path: the insert checked them all at once)."""
    mine, key = caller_limits(principal, config)
    used = usage_of(
        session=session, user_id=principal.user_id, api_key_id=principal.api_key_id, day=today()
    )
    for limits, queued, tokens, whose in (
        (mine, used.queued, used.tokens_today, "your account"),
        (key, used.key_queued, used.key_tokens_today, "this API key"),
    ):
        if limits.max_queued_jobs is not None and queued >= limits.max_queued_jobs:
            raise TooManyRequests(
                f"{whose.capitalize()} already has {queued} jobs waiting, its limit; "
                "submit more once some have started.",
                code="quota_queued_jobs",
                details={"limit": limits.max_queued_jobs, "queued": queued},
                headers={"Retry-After": str(QUEUED_RETRY_AFTER_S)},
            )
        if limits.tokens_per_day is not None and tokens >= limits.tokens_per_day:
            raise TooManyRequests(
                f"{whose.capitalize()} has spent its {limits.tokens_per_day} tokens of today "
                "(UTC).",
                code="quota_tokens_per_day",
                details={"limit": limits.tokens_per_day, "tokens": tokens},
                headers={"Retry-After": str(_seconds_to_midnight())},
            )


def max_priority(principal: Principal) -> int | None:
    """The priority ceiling of the caller's API key, if it has one."""
    value = principal.key_limits.get("max_priority")
    return None if value is None else int(value)


@dataclass(frozen=True)
class Report:
    """An account's quotas and what it uses of them now (GET .../usage)."""

    limits: Limits
    usage: Usage
    websockets: int
    day: date


def report(*, session: Session, user_id: uuid.UUID, limits: Limits, websockets: int) -> Report:
    used = usage_of(session=session, user_id=user_id, api_key_id=None, day=today())
    return Report(limits, used, websockets, today())
