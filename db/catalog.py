"""The model registry: search, register, change, and where each model is."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from config.settings import DEFAULT_REGISTRY
from db.base import utcnow
from db.models import Model, ModelReplica, ModelStatus, Node, ReplicaStatus


def registry_host(name: str) -> str:
    """The registry an engine contacts to pull `name`, in lower case.

    Ollama reads a name as `[host/][namespace/]model[:tag]`: with three parts or more the
    host is all before the last two (a scheme such as `https://` dropped); `library/llama3.2`
    and `llama3.2` come from registry.ollama.ai. A two-part name whose first part looks
    like a host (a "." or a ":", or localhost), as Docker reads `registry.example.com/model`,
    counts as that host too, so that neither reading reaches a registry nobody allowed."""
    bare = name.strip().lower()
    if bare.rfind(":") > bare.rfind("/"):
        bare = bare.rsplit(":", 1)[0]  # the tag
    parts = bare.rsplit("/", 2)
    if len(parts) == 3:
        return parts[0].split("://", 1)[-1].strip("/")
    if len(parts) == 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        return parts[0]
    return DEFAULT_REGISTRY


def disallowed_registry(name: str, allowed: list[str]) -> str | None:
    """The registry host of `name` when it is not in `allowed`, else None."""
    host = registry_host(name)
    return None if host in allowed else host


SORTS = {
    "name": Model.name,
    "created_at": Model.created_at,
    "size_bytes": Model.size_bytes,
    "updated_at": Model.updated_at,
}


def search_models(
    *,
    status: str | None = None,
    tag: str | None = None,
    q: str | None = None,
    include_disabled: bool = True,
) -> Select[Any]:
    """A select of models; `q` searches names, descriptions and tags (full text)."""
    query = select(Model)
    if status:
        query = query.where(Model.status == status)
    if not include_disabled:
        query = query.where(Model.status != ModelStatus.DISABLED)
    if tag:
        query = query.where(Model.tags.contains([tag]))
    if q:
        # English stems the descriptions; 'simple' keeps names and tags as written.
        query = query.where(
            or_(
                Model.search_vector.op("@@")(func.websearch_to_tsquery("english", q)),
                Model.search_vector.op("@@")(func.websearch_to_tsquery("simple", q)),
            )
        )
    return query


def set_disabled(*, session: Session, model: Model, disabled: bool) -> None:
    """Disabled models take no jobs; enabling one makes it available again if a node has it."""
    if disabled:
        model.status = ModelStatus.DISABLED
        return
    served = session.scalar(
        select(
            exists().where(
                ModelReplica.model_id == model.id,
                ModelReplica.status == ReplicaStatus.AVAILABLE,
            )
        )
    )
    model.status = ModelStatus.AVAILABLE if served else ModelStatus.UNAVAILABLE


@dataclass(frozen=True)
class Replica:
    node_id: uuid.UUID
    node_name: str
    node_status: str
    status: str
    loaded: bool
    last_seen_at: datetime | None
    pull_completed_bytes: int | None
    pull_total_bytes: int | None
    size_vram_bytes: int | None = None  # GPU memory it took when last loaded there
    expires_at: datetime | None = None  # when the engine unloads it; None: not loaded
    fits: bool | None = None  # False: the node's GPU memory cannot hold it


def replicas_of(*, session: Session, model_id: uuid.UUID) -> list[Replica]:
    rows = session.execute(
        select(
            Node.id,
            Node.name,
            Node.status,
            ModelReplica.status,
            ModelReplica.loaded,
            ModelReplica.last_seen_at,
            ModelReplica.pull_completed_bytes,
            ModelReplica.pull_total_bytes,
            ModelReplica.size_vram_bytes,
            ModelReplica.expires_at,
            ModelReplica.fits,
        )
        .join(ModelReplica, ModelReplica.node_id == Node.id)
        .where(ModelReplica.model_id == model_id)
        .order_by(Node.name)
    )
    return [Replica(*row) for row in rows]


def mark_replica(
    *,
    session: Session,
    model_id: uuid.UUID,
    node_id: uuid.UUID,
    status: ReplicaStatus,
    completed: int | None = None,
    total: int | None = None,
) -> None:
    """Create or update one node's replica of a model (pull started, progress, failure)."""
    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if completed is not None or total is not None:
        values |= {"pull_completed_bytes": completed, "pull_total_bytes": total}
    statement = insert(ModelReplica).values(model_id=model_id, node_id=node_id, **values)
    session.execute(
        statement.on_conflict_do_update(index_elements=["model_id", "node_id"], set_=values)
    )


def model_id_by_name(*, session: Session, name: str) -> uuid.UUID | None:
    return session.scalar(select(Model.id).where(Model.name == name))


def mark_removing(*, session: Session, model_id: uuid.UUID, node_id: uuid.UUID) -> bool:
    """Returns False when the node has no replica of the model."""
    result = session.execute(
        update(ModelReplica)
        .where(ModelReplica.model_id == model_id, ModelReplica.node_id == node_id)
        .values(status=ReplicaStatus.REMOVING, updated_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
