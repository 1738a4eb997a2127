"""Settings an admin may change while the system runs (PUT /api/v1/system/config).

Each has its default in the environment (config/settings.py); a value stored in the
`system_config` table overrides it in every web and worker process within seconds
(workers/runtime_config.py), without a restart.
"""

from __future__ import annotations

from typing import Any

from limits import parse_many
from pydantic import BaseModel, ConfigDict, Field, field_validator

from config.settings import Settings, registry_host_entry


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
