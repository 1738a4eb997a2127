"""Schemas for /api/v1/system: run-time config, stats and the audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from config.runtime import RuntimeConfig
from web.schemas.common import PageQuery, UtcDateTime


def _describe_settings(schema: dict[str, Any]) -> None:
    """Document the body as what the view accepts: RuntimeConfig's fields, each also null."""
    fields = RuntimeConfig.model_json_schema()["properties"]
    schema.update(
        properties={
            name: {"anyOf": [field, {"type": "null"}], "description": field.get("description")}
            for name, field in fields.items()
        },
        additionalProperties=False,
        minProperties=1,
    )


class ConfigChange(RootModel[dict[str, Any]]):
    """Setting -> new value, or null to go back to the environment's default. The values
    are checked together, against the settings as they are now."""

    # Only the shape is checked here; the view validates the values as a whole against
    # config/runtime.py's RuntimeConfig, as it knows the current ones. The schema still
    # lists each setting with its type, for the OpenAPI document.
    model_config = ConfigDict(json_schema_extra=_describe_settings)


class ConfigEntry(BaseModel):
    value: Any = Field(description="What every process uses now.")
    default: Any = Field(description="The environment's value, used when nothing is stored.")
    overridden: bool = Field(description="A value is stored (set through this API).")
    description: str


class ConfigRead(BaseModel):
    config: dict[str, ConfigEntry]


class DashboardStats(BaseModel):
    """The `dashboard_stats` materialized view's row (see docs/database.md)."""

    users_total: int
    users_active: int
    models_total: int
    models_available: int
    nodes_total: int
    nodes_online: int
    slots_total: int
    requests_queued: int
    requests_running: int
    requests_24h: int
    completed_24h: int
    failed_24h: int
    cancelled_24h: int
    prompt_tokens_24h: int
    completion_tokens_24h: int
    avg_queue_wait_ms_24h: float | None
    avg_latency_ms_24h: float | None
    requests_total: int
    completed_total: int
    errors_total: int
    prompt_tokens_total: int
    completion_tokens_total: int
    refreshed_at: datetime
    age_s: float = Field(description="Seconds between refreshed_at and the live figures' `at`.")


class UserQueueStats(BaseModel):
    user: str = Field(
        description='A username; "_other": the users past the top N, summed; '
        '"_erased": jobs of accounts erased since.'
    )
    queued: int
    oldest_wait_s: float = Field(description="How long the longest-waiting job has waited.")
    mean_wait_s: float


class QueueStats(BaseModel):
    total: int
    by_model: dict[str, int]
    by_priority: dict[int, int] = Field(description="Priority (9 runs first) -> queued jobs.")
    by_user: list[UserQueueStats] = Field(
        default_factory=list,
        description="The FAIR_SHARE_METRICS_TOP_USERS users with the most waiting jobs, "
        'deepest first, then "_other" (docs/pipeline.md, Fair share).',
    )


class RunningStats(BaseModel):
    total: int
    by_model: dict[str, int]


class NodeStatusStats(BaseModel):
    nodes: int
    drained: int
    slots: int
    slots_busy: int


class ThroughputStats(BaseModel):
    window_s: int
    requests_completed: int = Field(description="Requests completed within the window.")
    completion_tokens: int = Field(description="Their generated tokens (eval_count).")
    tokens_per_s: float = Field(description="completion_tokens / window_s: the fleet's output.")
    generation_tokens_per_s: float | None = Field(
        description="completion_tokens / their summed eval_duration: the average decoding "
        "speed of one stream. Null when nothing completed."
    )


class LiveStatsRead(BaseModel):
    at: datetime
    queue: QueueStats
    running: RunningStats
    nodes: dict[str, NodeStatusStats] = Field(description="By node status.")
    throughput: ThroughputStats


class StatsRead(BaseModel):
    dashboard: DashboardStats | None
    live: LiveStatsRead


class StatsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    refresh: bool = Field(default=False, description="Refresh the dashboard view first.")


class AuditListQuery(PageQuery):
    user_id: uuid.UUID | None = None
    action: str | None = Field(
        default=None, max_length=65, description='Exact, or a prefix ending in "*".'
    )
    resource_type: str | None = Field(default=None, max_length=64)
    resource_id: str | None = Field(default=None, max_length=64)
    since: UtcDateTime | None = Field(default=None, description="Inclusive; UTC if no offset.")
    until: UtcDateTime | None = Field(default=None, description="Exclusive; UTC if no offset.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("until must be after since")
        return self


class AuditEntryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    occurred_at: datetime
    user_id: uuid.UUID | None
    action: str
    resource_type: str | None
    resource_id: str | None
    ip_address: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any]
