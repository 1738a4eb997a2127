"""Answers of the liveness and readiness probes (web/health.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from web.schemas.errors import ErrorInfo


class Liveness(BaseModel):
    status: Literal["ok"]


class CheckResult(BaseModel):
    ok: bool
    latency_ms: float
    error: str | None = Field(default=None, description="The exception's name when not ok.")


class Readiness(BaseModel):
    """200 when every dependency answers; 503 names the ones that did not, in `error` (the
    usual error object, next to the checks a load balancer or a human wants to see)."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, CheckResult] = Field(description="postgres, redis, broker.")
    error: ErrorInfo | None = None
