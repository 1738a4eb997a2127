"""/api/v1/nodes/*: GPU hosts, what they hold and how loaded they are; operators label,
resize, drain and decommission them. Workers read what was asked at each heartbeat."""

from __future__ import annotations

import json
import uuid

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from db.base import utcnow
from db.fleet import node_load
from db.models import Node
from web.database import get_session
from web.errors import Conflict, NotFound
from web.extensions import current_settings
from web.fleet.caching import MODELS, NODES, cached, invalidate_after_commit
from web.openapi import documented
from web.pagination import paginate
from web.request_audit import audit
from web.schemas.common import Page
from web.schemas.fleet import (
    LoadedModelRead,
    NodeDecommissionQuery,
    NodeHealth,
    NodeListQuery,
    NodeRead,
    NodeUpdate,
)
from web.security.policy import Permission
from web.security.principal import require
from web.validation import load_body, load_query

bp = Blueprint("nodes", __name__, url_prefix="/api/v1/nodes")

ORDER = {
    "name": (Node.name.asc(),),
    "-name": (Node.name.desc(),),
    "-last_heartbeat_at": (Node.last_heartbeat_at.desc().nulls_last(), Node.name),
}


def _node(node_id: uuid.UUID) -> Node:
    node = get_session().get(Node, node_id)
    if node is None:
        raise NotFound("No such node.")
    return node


def _with_load(items: list[dict[str, object]]) -> list[dict[str, object]]:
    ids = [uuid.UUID(str(item["id"])) for item in items]
    loads = node_load(session=get_session(), node_ids=ids)
    for item, node_id in zip(items, ids, strict=True):
        load = loads[node_id]
        item.update(
            loaded_models=load.loaded_models,
            loaded=[LoadedModelRead(**held).model_dump(mode="json") for held in load.loaded],
            queue_depth=load.queue_depth,
            running=load.running,
        )
    return items


def _read(node: Node) -> dict[str, object]:
    return _with_load([NodeRead.model_validate(node).model_dump(mode="json")])[0]


@bp.get("/")
@documented("List nodes with their load", query=NodeListQuery, responses={200: Page[NodeRead]})
@require(Permission.FLEET_READ)
def list_nodes() -> Response:
    query = load_query(NodeListQuery)

    def load() -> dict[str, object]:
        select_ = select(Node)
        if query.status:
            select_ = select_.where(Node.status == query.status)
        page = paginate(get_session(), select_, (*ORDER[query.sort], Node.id), query, NodeRead)
        page["items"] = _with_load(page["items"])
        return page

    return jsonify(cached(NODES, json.dumps(query.model_dump(mode="json"), sort_keys=True), load))


@bp.get("/<uuid:node_id>")
@documented("One node with its load", responses={200: NodeRead})
@require(Permission.FLEET_READ)
def read_node(node_id: uuid.UUID) -> Response:
    return jsonify(_read(_node(node_id)))


@bp.put("/<uuid:node_id>")
@documented("Label, resize, drain or undrain a node", body=NodeUpdate, responses={200: NodeRead})
@require(Permission.FLEET_WRITE)
def update_node(node_id: uuid.UUID) -> Response:
    """Labels, slots (the worker applies them at its next heartbeat, up to the threads it
    started with), drain/undrain (a drained node finishes what runs and takes nothing new)."""
    body = load_body(NodeUpdate)
    node = _node(node_id)
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(node, field, value)
    get_session().flush()
    audit(
        "node.updated",
        resource_type="node",
        resource_id=node.id,
        details=body.model_dump(exclude_none=True),
    )
    invalidate_after_commit(NODES, MODELS)
    return jsonify(_read(node))


@bp.delete("/<uuid:node_id>")
@documented(
    "Decommission a node",
    query=NodeDecommissionQuery,
    responses={204: None, 409: "Jobs run on the node and force is not set (node_busy)."},
)
@require(Permission.FLEET_WRITE)
def decommission_node(node_id: uuid.UUID) -> tuple[str, int]:
    """Forget the node; its worker notices at its next heartbeat and stops. Refused while
    jobs run on it, unless ?force=true (they finish or are re-queued by the lease sweep)."""
    force = load_query(NodeDecommissionQuery).force
    node = _node(node_id)
    running = node_load(session=get_session(), node_ids=[node.id])[node.id].running
    if running and not force:
        raise Conflict(
            f"{running} job(s) are running on {node.name}; drain it first or pass ?force=true.",
            code="node_busy",
            details={"running": running},
        )
    get_session().delete(node)
    audit(
        "node.decommissioned",
        resource_type="node",
        resource_id=node_id,
        details={"name": node.name, "forced": bool(running)},
    )
    invalidate_after_commit(NODES, MODELS)
    return "", 204


@bp.get("/<uuid:node_id>/health")
@documented(
    "Whether a node is alive, by its heartbeat",
    description="A node whose heartbeat is older than NODE_STALE_AFTER_S shows offline even "
    "before beat marks it.",
    responses={200: NodeHealth},
)
@require(Permission.FLEET_READ)
def node_health(node_id: uuid.UUID) -> Response:
    node = _node(node_id)
    age = (utcnow() - node.last_heartbeat_at).total_seconds() if node.last_heartbeat_at else None
    stale_after = current_settings().node_stale_after_s
    status, reason = node.status, node.status_reason
    if status != "offline" and (age is None or age > stale_after):
        # Beat has not marked it yet; the answer should not wait for it.
        status, reason = "offline", "no heartbeat"
    body = NodeHealth(
        id=node.id,
        name=node.name,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        drained=node.drained,
        last_heartbeat_at=node.last_heartbeat_at,
        heartbeat_age_s=round(age, 3) if age is not None else None,
        stale_after_s=stale_after,
    )
    return jsonify(body.model_dump(mode="json"))
