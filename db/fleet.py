"""The fleet in the database: nodes registering and beating, the models they hold, and
whether anyone serves a model right now."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, ColumnElement, delete, exists, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import (
    InferenceRequest,
    Model,
    ModelReplica,
    ModelStatus,
    Node,
    NodeStatus,
    ReplicaStatus,
    RequestStatus,
)


def canonical_model_name(name: str) -> str:
    """Ollama's rule: a name without a tag means `:latest`."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True)
class NodeReport:
    """What a worker knows about itself and its engine."""

    name: str
    hostname: str
    gpu_index: int | None
    engine_kind: str
    engine_url: str
    slots: int
    worker_name: str
    gpu_name: str | None = None
    gpu_memory_total_bytes: int | None = None
    gpu_memory_free_bytes: int | None = None
    gpu_utilization_pct: float | None = None
    engine_version: str | None = None


def register_node(*, session: Session, report: NodeReport) -> uuid.UUID:
    """Insert or refresh the node row for (hostname, gpu_index); it comes online."""
    values = {
        "name": report.name,
        "hostname": report.hostname,
        "gpu_index": report.gpu_index,
        "gpu_name": report.gpu_name,
        "gpu_memory_total_bytes": report.gpu_memory_total_bytes,
        "gpu_memory_free_bytes": report.gpu_memory_free_bytes,
        "gpu_utilization_pct": report.gpu_utilization_pct,
        "engine_kind": report.engine_kind,
        "engine_url": report.engine_url,
        "engine_version": report.engine_version,
        "worker_name": report.worker_name,
        "slots": report.slots,
        "status": NodeStatus.ONLINE,
        "status_reason": None,
        "last_heartbeat_at": utcnow(),
    }
    existing = session.scalar(select(Node).where(Node.name == report.name))
    if existing is None:
        node = Node(**values)
        session.add(node)
        session.flush()
        return node.id
    for key, value in values.items():
        setattr(existing, key, value)
    session.flush()
    return existing.id


def heartbeat(
    *,
    session: Session,
    node_id: uuid.UUID,
    slots_busy: int,
    gpu: dict[str, Any] | None = None,
    status: NodeStatus = NodeStatus.ONLINE,
    reason: str | None = None,
    routing: list[dict[str, Any]] | None = None,
) -> NodeStatus | None:
    """Record a beat (and, given, the worker's last routing decisions); returns the status
    the node had before it (None: no such node)."""
    previous = (
        select(Node.status).where(Node.id == node_id).scalar_subquery()
    )  # read in the same statement, before the update applies
    extra: dict[str, Any] = {"routing": routing} if routing is not None else {}
    row = session.execute(
        update(Node)
        .where(Node.id == node_id)
        .values(
            last_heartbeat_at=utcnow(),
            slots_busy=slots_busy,
            status=status,
            status_reason=reason,
            **(gpu or {}),
            **extra,
        )
        .returning(previous)
    ).first()
    return NodeStatus(row[0]) if row else None


def mark_offline(*, session: Session, node_id: uuid.UUID, reason: str) -> None:
    session.execute(
        update(Node)
        .where(Node.id == node_id)
        .values(status=NodeStatus.OFFLINE, status_reason=reason, slots_busy=0)
    )
    forget_loaded(session=session, node_ids=[node_id])


def forget_loaded(*, session: Session, node_ids: list[uuid.UUID]) -> None:
    """An offline node's engine holds nothing in memory that we know of."""
    if node_ids:
        session.execute(
            update(ModelReplica)
            .where(ModelReplica.node_id.in_(node_ids), ModelReplica.loaded.is_(True))
            .values(loaded=False, expires_at=None)
        )


@dataclass(frozen=True)
class InMemory:
    """A model its engine has loaded: GPU bytes it takes and when it unloads, if told."""

    size_vram: int | None = None
    expires_at: datetime | None = None


def sync_replicas(
    *,
    session: Session,
    node_id: uuid.UUID,
    present: dict[str, dict[str, Any]],
    loaded: Collection[str] | Mapping[str, InMemory],
    too_big: Collection[str] = (),
) -> tuple[set[str], set[str]]:
    """Make the node's replicas match what its engine lists. `present` maps canonical model
    names to the engine's record (size, digest); `loaded` names those in memory (with their
    size and expiry, when the engine says); `too_big` those the node's GPU memory cannot
    hold (their replicas serve nothing). Models seen for the first time are registered as
    discovered. A replica being pulled stays while the engine does not list it yet (the
    pull's progress and its end decide). Returns (added, removed) model names."""
    memory = loaded if isinstance(loaded, Mapping) else {name: InMemory() for name in loaded}
    now = utcnow()
    for name, record in present.items():
        session.execute(
            insert(Model)
            .values(
                name=name,
                size_bytes=record.get("size"),
                digest=_digest(record),
                status=ModelStatus.AVAILABLE,
                discovered=True,
                family=(record.get("details") or {}).get("family"),
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
    rows = session.execute(select(Model.name, Model.id).where(Model.name.in_(present)))
    models = {name: model_id for name, model_id in rows}
    before = set(
        session.scalars(
            select(Model.name)
            .join(ModelReplica, ModelReplica.model_id == Model.id)
            .where(ModelReplica.node_id == node_id, ModelReplica.status != ReplicaStatus.PULLING)
        )
    )
    for name, model_id in models.items():
        held = memory.get(name)
        values = {
            "status": ReplicaStatus.AVAILABLE,
            "loaded": held is not None,
            "expires_at": held.expires_at if held else None,
            "fits": name not in too_big,
            "last_seen_at": now,
        }
        statement = insert(ModelReplica).values(
            model_id=model_id,
            node_id=node_id,
            size_vram_bytes=held.size_vram if held else None,
            **values,
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["model_id", "node_id"],
                set_={
                    **values,
                    # The size it took when last loaded stays: it is what a load needs.
                    "size_vram_bytes": func.coalesce(
                        statement.excluded.size_vram_bytes, ModelReplica.size_vram_bytes
                    ),
                    "updated_at": now,
                },
            )
        )
    gone = before - set(present)
    if gone:
        session.execute(
            delete(ModelReplica).where(
                ModelReplica.node_id == node_id,
                ModelReplica.model_id.in_(select(Model.id).where(Model.name.in_(gone))),
            )
        )
    _refresh_model_status(session=session)
    return set(present) - before, gone


# What an engine's model details say that the doors' /api/tags and /api/show show.
DETAIL_PARAMETERS = ("format", "parameter_size", "quantization_level")


def record_engine_details(*, session: Session, name: str, described: dict[str, Any]) -> None:
    """What an engine said about model `name` (Ollama's /api/show), kept with the model for
    the doors: `show` replaced by this answer, and the format, size and quantization its
    details name filled in where the model has none (an operator's values stand)."""
    details = described.get("details") or {}
    filled = {key: details[key] for key in DETAIL_PARAMETERS if details.get(key)}
    session.execute(
        update(Model)
        .where(Model.name == name)
        .values(
            parameters=literal(filled, JSONB)
            .op("||")(Model.parameters)
            .op("||")(literal({"show": described}, JSONB))
        )
    )


def _digest(record: dict[str, Any]) -> str | None:
    digest = str(record.get("digest") or "")
    return f"sha256:{digest}" if len(digest) == 64 else None


def _refresh_model_status(*, session: Session) -> None:
    """available <-> unavailable by whether any replica exists; disabled stays disabled."""
    has_replica = exists().where(
        ModelReplica.model_id == Model.id, ModelReplica.status == ReplicaStatus.AVAILABLE
    )
    session.execute(
        update(Model)
        .where(Model.status == ModelStatus.UNAVAILABLE, has_replica)
        .values(status=ModelStatus.AVAILABLE)
    )
    session.execute(
        update(Model)
        .where(Model.status == ModelStatus.AVAILABLE, ~has_replica)
        .values(status=ModelStatus.UNAVAILABLE)
    )


@dataclass(frozen=True)
class Availability:
    model_id: uuid.UUID | None  # None: no such model registered
    disabled: bool
    served: bool


def served(heard_since: Any) -> ColumnElement[bool]:
    """Whether a node serves the `models` row being read: the SQL function model_served
    (migration 0009), the one statement of the rule, which the submission's admit() calls
    too: an online, undrained node with a heartbeat after `heard_since` holds an available
    replica that fits its GPU memory."""
    return func.model_served(Model.id, heard_since, type_=Boolean)


def availability(*, session: Session, model_name: str, stale_after: timedelta) -> Availability:
    """Whether an online, undrained node with a fresh heartbeat holds `model_name`: one query."""
    row = session.execute(
        select(Model.id, Model.status, served(utcnow() - stale_after)).where(
            Model.name == model_name
        )
    ).first()
    if row is None:
        return Availability(model_id=None, disabled=False, served=False)
    return Availability(model_id=row[0], disabled=row[1] == ModelStatus.DISABLED, served=row[2])


@dataclass(frozen=True)
class NodeLoad:
    loaded_models: list[str]
    queue_depth: int  # queued jobs for the models this node holds
    running: int  # jobs running on it now
    # The loaded models with the GPU memory each takes and when it unloads.
    loaded: list[dict[str, Any]] = field(default_factory=list)


def node_load(*, session: Session, node_ids: list[uuid.UUID]) -> dict[uuid.UUID, NodeLoad]:
    """Loaded models, queue depth and running jobs for each node, in three queries."""
    loaded: dict[uuid.UUID, list[dict[str, Any]]] = {node_id: [] for node_id in node_ids}
    for node_id, name, size_vram, expires_at in session.execute(
        select(
            ModelReplica.node_id, Model.name, ModelReplica.size_vram_bytes, ModelReplica.expires_at
        )
        .join(Model, Model.id == ModelReplica.model_id)
        .where(ModelReplica.node_id.in_(node_ids), ModelReplica.loaded.is_(True))
        .order_by(Model.name)
    ):
        loaded[node_id].append(
            {"model": name, "size_vram_bytes": size_vram, "expires_at": expires_at}
        )
    queued = dict(
        session.execute(
            select(ModelReplica.node_id, func.count(InferenceRequest.id))
            .join(Model, Model.id == ModelReplica.model_id)
            .join(InferenceRequest, InferenceRequest.model_name == Model.name)
            .where(
                ModelReplica.node_id.in_(node_ids),
                InferenceRequest.status == RequestStatus.QUEUED,
            )
            .group_by(ModelReplica.node_id)
        ).all()
    )
    running = dict(
        session.execute(
            select(InferenceRequest.node_id, func.count())
            .where(
                InferenceRequest.node_id.in_(node_ids),
                InferenceRequest.status == RequestStatus.RUNNING,
            )
            .group_by(InferenceRequest.node_id)
        ).all()
    )
    return {
        node_id: NodeLoad(
            [item["model"] for item in loaded[node_id]],
            int(queued.get(node_id, 0)),
            int(running.get(node_id, 0)),
            loaded[node_id],
        )
        for node_id in node_ids
    }


@dataclass(frozen=True)
class NodeOrders:
    """What operators asked of a node, read by its worker at each heartbeat."""

    drained: bool
    slots: int


def node_orders(*, session: Session, node_id: uuid.UUID) -> NodeOrders | None:
    """None: the node was decommissioned."""
    row = session.execute(select(Node.drained, Node.slots).where(Node.id == node_id)).first()
    return NodeOrders(drained=row[0], slots=row[1]) if row else None


@dataclass(frozen=True)
class WarmReplica:
    """One row of a worker's routing view: a node serving a model this node holds."""

    model: str
    node: str  # the node's name (its queue is node.<name>)
    loaded: bool
    expires_at: datetime | None
    free_slots: int  # as of that node's last heartbeat
    size_vram_bytes: int | None  # what the model took when last loaded there
    model_size_bytes: int | None  # the model's size on disk (a lower bound of its need)


def routing_view(
    *, session: Session, node_id: uuid.UUID, stale_after: timedelta
) -> list[WarmReplica]:
    """For every model node `node_id` holds: the online, undrained, freshly heard nodes that
    hold it too (itself included), whether they have it loaded, and their free slots; one
    query, read by the worker with its heartbeat (workers/routing.py)."""
    mine = select(ModelReplica.model_id).where(ModelReplica.node_id == node_id)
    rows = session.execute(
        select(
            Model.name,
            Node.name,
            ModelReplica.loaded,
            ModelReplica.expires_at,
            Node.slots - Node.slots_busy,
            ModelReplica.size_vram_bytes,
            Model.size_bytes,
        )
        .join(ModelReplica, ModelReplica.model_id == Model.id)
        .join(Node, Node.id == ModelReplica.node_id)
        .where(
            Model.id.in_(mine),
            ModelReplica.status == ReplicaStatus.AVAILABLE,
            Node.status == NodeStatus.ONLINE,
            Node.drained.is_(False),
            Node.last_heartbeat_at > utcnow() - stale_after,
        )
    )
    return [WarmReplica(*row) for row in rows]
