"""Models, replicas and nodes as the API takes and shows them."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
)

from db.models import ModelStatus, NodeStatus
from web.schemas.common import MODEL_NAME_MAX, PageQuery, fits_with_its_tag

# An Ollama model reference: [namespace/]name[:tag], lower-case names as Ollama requires.
MODEL_NAME = r"^[a-z0-9][a-z0-9._\-]*(/[a-z0-9][a-z0-9._\-]*)*(:[A-Za-z0-9][A-Za-z0-9._\-]*)?$"
DIGEST = r"^sha256:[0-9a-f]{64}$"


def _check_tags(tags: list[str]) -> list[str]:
    cleaned = []
    for tag in tags:
        tag = tag.strip()
        if not 1 <= len(tag) <= 50:
            raise ValueError("each tag is 1 to 50 characters")
        cleaned.append(tag)
    return sorted(set(cleaned))


class ModelLimits(BaseModel):
    """Bounds on what a job may ask of this model, below the fleet-wide ones (MAX_NUM_PREDICT,
    MAX_NUM_CTX): a larger num_predict or num_ctx is clamped to them, and a job naming no
    num_predict gets max_num_predict (docs/security.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # 5, not "5" or true

    max_num_predict: int | None = Field(default=None, ge=1, le=10_000_000)
    max_num_ctx: int | None = Field(default=None, ge=1, le=10_000_000)


class ModelFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, max_length=64)
    family: str | None = Field(default=None, max_length=64)
    size_bytes: int | None = Field(default=None, ge=0, le=2**50)
    digest: str | None = Field(default=None, pattern=DIGEST, description="sha256:<64 hex>")
    tags: list[str] | None = Field(default=None, max_length=32)
    parameters: dict[str, Any] | None = Field(
        default=None, max_length=64, description="e.g. {'parameter_size': '8B'}"
    )
    description: str | None = Field(default=None, max_length=2000)
    limits: ModelLimits | None = Field(default=None, description="null clears them.")

    @field_validator("tags")
    @classmethod
    def _clean_tags(cls, tags: list[str] | None) -> list[str] | None:
        return None if tags is None else _check_tags(tags)


class ModelCreate(ModelFields):
    name: Annotated[
        str,
        Field(
            min_length=1, max_length=MODEL_NAME_MAX, pattern=MODEL_NAME, description="name[:tag]"
        ),
        AfterValidator(fits_with_its_tag),
    ]


class ModelUpdate(ModelFields):
    disabled: bool | None = Field(default=None, description="Disabled models take no jobs.")


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: str | None
    family: str | None
    size_bytes: int | None
    digest: str | None
    tags: list[str]
    parameters: dict[str, Any]
    description: str | None
    limits: dict[str, int] = Field(description="Per-model bounds (ModelLimits).")
    status: ModelStatus
    discovered: bool
    created_at: datetime
    updated_at: datetime


class ModelSort(StrEnum):
    NAME = "name"
    NAME_DESC = "-name"
    CREATED = "created_at"
    CREATED_DESC = "-created_at"
    SIZE = "size_bytes"
    SIZE_DESC = "-size_bytes"
    UPDATED_DESC = "-updated_at"


class ModelListQuery(PageQuery):
    status: ModelStatus | None = None
    tag: str | None = Field(default=None, max_length=50)
    q: str | None = Field(default=None, min_length=1, max_length=200)
    sort: ModelSort = ModelSort.NAME


class ReplicaRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    node_id: uuid.UUID
    node_name: str
    node_status: NodeStatus
    status: str
    loaded: bool
    last_seen_at: datetime | None
    pull_completed_bytes: int | None
    pull_total_bytes: int | None
    size_vram_bytes: int | None = None
    expires_at: datetime | None = None
    fits: bool | None = None


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: uuid.UUID | Literal["all"] = Field(
        default="all", description='A node id, or "all" online nodes that are not drained.'
    )


class NodeRef(BaseModel):
    id: uuid.UUID
    name: str


class PullAccepted(BaseModel):
    model: str
    nodes: list[NodeRef] = Field(description="Where the pull was queued.")


class ReplicaRemovalAccepted(BaseModel):
    model: str
    node: NodeRef


class LoadedModelRead(BaseModel):
    """A model in a node's engine memory now (Ollama's /api/ps, at the last heartbeat)."""

    model: str
    size_vram_bytes: int | None = None
    expires_at: datetime | None = None


class RoutingDecision(BaseModel):
    """What the node's worker did with a job it received (warm-model-first routing):
    warm (its model loaded here), handed_in (sent here by `node`), handed (sent to `node`,
    which had it loaded and a slot free), cold_after_wait (every warm node stayed busy for
    WARM_ROUTING_WAIT_S), cold_none_warm (no node had it loaded), unrouted (routing off)."""

    request_id: str
    model: str | None
    decision: str
    node: str | None = None
    waited_s: float = 0.0
    at: datetime


class NodeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    hostname: str
    gpu_index: int | None
    gpu_name: str | None
    gpu_memory_total_bytes: int | None
    gpu_memory_free_bytes: int | None
    gpu_utilization_pct: float | None
    engine_kind: str
    engine_url: str
    engine_version: str | None
    worker_name: str | None
    status: NodeStatus
    status_reason: str | None
    labels: dict[str, Any]
    slots: int
    slots_busy: int
    drained: bool
    last_heartbeat_at: datetime | None
    created_at: datetime
    loaded_models: list[str] = Field(default_factory=list)
    # The same, with the GPU memory each takes and when the engine unloads it.
    loaded: list[LoadedModelRead] = Field(default_factory=list)
    # The worker's last routing decisions, newest first (written with its heartbeat).
    routing: list[RoutingDecision] = Field(default_factory=list)
    queue_depth: int = 0
    running: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def gpu_memory_used_bytes(self) -> int | None:
        if self.gpu_memory_total_bytes is None or self.gpu_memory_free_bytes is None:
            return None
        return self.gpu_memory_total_bytes - self.gpu_memory_free_bytes


class NodeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] | None = Field(default=None, max_length=32)
    slots: int | None = Field(default=None, ge=1, le=256)
    drained: bool | None = Field(
        default=None, description="A drained node finishes its running jobs and takes no new ones."
    )

    @field_validator("labels")
    @classmethod
    def _short_labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (labels or {}).items():
            if not 1 <= len(key) <= 63 or len(value) > 255:
                raise ValueError("label keys are 1 to 63 characters, values at most 255")
        return labels


class NodeSort(StrEnum):
    NAME = "name"
    NAME_DESC = "-name"
    HEARTBEAT_DESC = "-last_heartbeat_at"


class NodeListQuery(PageQuery):
    status: NodeStatus | None = None
    sort: NodeSort = NodeSort.NAME


class NodeDecommissionQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    force: bool = Field(
        default=False, description="Decommission although jobs run there (they finish or requeue)."
    )


class NodeHealth(BaseModel):
    id: uuid.UUID
    name: str
    status: NodeStatus
    reason: str | None
    drained: bool
    last_heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    stale_after_s: int
