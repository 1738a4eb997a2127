"""Settings an admin may change while the system runs (PUT /api/v1/system/config).

Each has its default in the environment (config/settings.py); a value stored in the
`system_config` table overrides it in every web and worker process within seconds
(workers/runtime_config.py), without a restart.
"""

from __future__ import annotations

import math
import re
from typing import Any

from limits import parse_many
from pydantic import BaseModel, ConfigDict, Field, field_validator

from config.settings import Settings, registry_host_entry

# A Go duration as Ollama reads keep_alive ("5m", "1h30m", "-1s", "0", "1.5h"), unit by unit.
_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_UNIT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def keep_alive_seconds(value: float | str) -> float:
    """keep_alive as Ollama reads it, in seconds: a number is seconds, a string a Go duration
    ("0" included); a negative value means "keep it loaded forever" (math.inf). Raises
    ValueError for anything Ollama would refuse."""
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number of seconds or a duration such as '5m'")
    if isinstance(value, int | float):
        if math.isnan(value):
            raise ValueError("keep_alive must be a number")
        return math.inf if value < 0 else float(value)
    text = value.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION.fullmatch(text):
        raise ValueError(f"keep_alive {value!r} is not a duration such as '5m' or '1h30m'")
    seconds = sum(float(n) * _SECONDS[unit] for n, unit in _UNIT.findall(text))
    return math.inf if text.startswith("-") and seconds > 0 else seconds


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ratelimit_default: str = Field(description="Every caller's budget, e.g. 100/minute;10/second.")
    ratelimit_login: str = Field(description="Login attempts per IP.")
    ratelimit_register: str = Field(description="Registrations per IP.")
    default_priority: int = Field(ge=0, le=9, description="Priority of a job that names none.")
    max_generation_s: int = Field(
        ge=1, description="A job running longer fails; at most MAX_GENERATION_S."
    )
    queue_while_unavailable: bool = Field(
        description="Accept jobs for a model no online node serves (they wait) instead of 409."
    )
    retention_days: int = Field(
        ge=1, le=3650, description="Finished requests and audit entries older than this go."
    )
    pull_registries: list[str] = Field(
        description="Registry hosts (host[:port]) models may be pulled from; a name without "
        "a host (llama3.2, library/llama3.2) comes from registry.ollama.ai."
    )

    user_max_priority: int = Field(
        ge=0, le=9, description="Highest priority a user's job gets (operators, admins: 9)."
    )
    max_num_predict: int = Field(
        ge=1, description="num_predict (max_tokens) above this, or -1/-2, is clamped to it."
    )
    max_num_ctx: int = Field(ge=1, description="num_ctx above this is clamped to it.")
    keep_alive_max: str = Field(
        description="A user's keep_alive (a Go duration, e.g. 30m) is clamped to this."
    )
    keep_alive_default: str = Field(
        description="keep_alive of a job that names none; empty: the engine's own default."
    )

    quota_max_queued_jobs: int = Field(
        ge=0, description="Jobs a user may have waiting at once (0: no limit); more: 429."
    )
    quota_max_running_jobs: int = Field(
        ge=0, description="Jobs of one user running at once (0: no limit); the rest wait."
    )
    quota_tokens_per_day: int = Field(
        ge=0, description="Prompt + completion tokens a user may spend per UTC day (0: none)."
    )
    quota_max_websockets: int = Field(
        ge=0, description="WebSockets a user may hold open at once (0: no limit)."
    )
    fair_share_default_weight: float = Field(
        ge=0.1,
        le=100,
        description="Fair-share weight of an account an admin gave none (docs/pipeline.md).",
    )

    @field_validator("keep_alive_max")
    @classmethod
    def _is_a_bound(cls, value: str) -> str:
        if not math.isfinite(keep_alive_seconds(value)):
            raise ValueError("a bound must be finite (not negative)")
        return value

    @field_validator("keep_alive_default")
    @classmethod
    def _is_a_duration(cls, value: str) -> str:
        if value:
            keep_alive_seconds(value)
        return value

    @field_validator("ratelimit_default", "ratelimit_login", "ratelimit_register")
    @classmethod
    def _is_a_limit(cls, value: str) -> str:
        try:
            limits = parse_many(value)
        except ValueError:
            raise ValueError("not a rate limit such as '100/minute;10/second'") from None
        if any(limit.amount < 1 for limit in limits):
            # It would refuse every request, the admin's PUT that undoes it included.
            raise ValueError("every limit must allow at least 1 request")
        return value

    @field_validator("pull_registries")
    @classmethod
    def _are_hosts(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(registry_host_entry(host) for host in value))

    @classmethod
    def defaults(cls, settings: Settings) -> RuntimeConfig:
        return cls.model_validate({name: getattr(settings, name) for name in cls.model_fields})

    @classmethod
    def merged(cls, settings: Settings, stored: dict[str, Any]) -> RuntimeConfig:
        """The defaults overridden by stored values; a stored value that no longer fits (a
        key since removed, a type since changed) is ignored rather than fatal."""
        config = cls.defaults(settings)
        for name, value in stored.items():
            if name not in cls.model_fields:
                continue
            try:
                config = cls.model_validate({**config.model_dump(), name: value})
            except ValueError:
                continue
        return config.capped(settings)

    def capped(self, settings: Settings) -> RuntimeConfig:
        # The broker's visibility timeout and Celery's time limits are sized from the
        # environment's MAX_GENERATION_S: the run-time value can lower it, not raise it.
        if self.max_generation_s > settings.max_generation_s:
            return self.model_copy(update={"max_generation_s": settings.max_generation_s})
        return self
