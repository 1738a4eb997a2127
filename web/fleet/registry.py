"""/api/v1/models/*: the registry (search, register, change, remove) and distribution (pull a
model onto nodes, remove it from one). Operators and admins write; users read the models they
may use (not disabled ones)."""

from __future__ import annotations

import json
import uuid

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from db.catalog import (
    SORTS,
    disallowed_registry,
    mark_removing,
    mark_replica,
    replicas_of,
    search_models,
    set_disabled,
)
from db.fleet import canonical_model_name
from db.models import Model, Node, NodeStatus, ReplicaStatus
from web.database import after_commit, get_session
from web.errors import Conflict, Forbidden, NotFound
from web.extensions import current_celery, current_runtime_config
from web.fleet.caching import MODELS, NODES, cached, invalidate_after_commit
from web.openapi import documented
from web.pagination import paginate
from web.request_audit import audit
from web.schemas.common import Items, Page
from web.schemas.fleet import (
    ModelCreate,
    ModelListQuery,
    ModelRead,
    ModelUpdate,
    NodeRef,
    PullAccepted,
    PullRequest,
    ReplicaRead,
    ReplicaRemovalAccepted,
)
from web.security.policy import Permission
from web.security.principal import authenticated, require
from web.validation import load_body, load_query
from workers.dispatch import MODEL_DELETE, MODEL_PULL, publish_to_node

bp = Blueprint("models", __name__, url_prefix="/api/v1/models")


def _model(model_id: uuid.UUID) -> Model:
    model = get_session().get(Model, model_id)
    hidden = model is not None and model.status == "disabled"
    if model is None or (hidden and not authenticated().can(Permission.FLEET_WRITE)):
        raise NotFound("No such model.")
    return model


def ensure_pull_allowed(name: str) -> None:
    """403 `registry_not_allowed` unless the registry `name` would be pulled from is in the
    run-time config's pull_registries (admins set it; registry.ollama.ai by default). Every
    way to register or pull a model by name calls this first: the engine would otherwise
    contact whatever host the name spells."""
    allowed = current_runtime_config().pull_registries
    host = disallowed_registry(name, allowed)
    if host is not None:
        raise Forbidden(
            f"Models are not pulled from {host}; an admin allows it in the run-time config's "
            f"pull_registries (now: {', '.join(allowed) or 'none'}).",
            code="registry_not_allowed",
            details={"registry": host, "allowed": allowed},
        )


def _read(model: Model) -> dict[str, object]:
    return ModelRead.model_validate(model).model_dump(mode="json")


@bp.get("/")
@documented(
    "Search the model registry",
    description="Disabled models are listed to operators and admins only.",
    query=ModelListQuery,
    responses={200: Page[ModelRead]},
)
@require(Permission.FLEET_READ)
def list_models() -> Response:
    query = load_query(ModelListQuery)
    staff = authenticated().can(Permission.FLEET_WRITE)
    column = SORTS[query.sort.lstrip("-")]
    order = (column.desc() if query.sort.startswith("-") else column.asc(), Model.id)

    def load() -> dict[str, object]:
        select_ = search_models(
            status=query.status, tag=query.tag, q=query.q, include_disabled=staff
        )
        return paginate(get_session(), select_, order, query, ModelRead)

    key = json.dumps([staff, query.model_dump(mode="json")], sort_keys=True)
    return jsonify(cached(MODELS, key, load))


@bp.post("/")
@documented(
    "Register a model before any node has it",
    description="It is unavailable until a node's engine has it (or a pull finishes).",
    body=ModelCreate,
    responses={
        201: ModelRead,
        403: "The name's registry is not in pull_registries (registry_not_allowed).",
        409: "A model with this name exists.",
    },
)
@require(Permission.FLEET_WRITE)
def register_model() -> tuple[Response, int]:
    body = load_body(ModelCreate)
    ensure_pull_allowed(body.name)
    fields = body.model_dump(exclude_none=True, exclude={"name"})
    model = Model(name=canonical_model_name(body.name), discovered=False, **fields)
    # Registered before any node has it: unavailable until one does (or a pull finishes).
    model.status = "unavailable"
    session = get_session()
    session.add(model)
    session.flush()  # a duplicate name answers 409 through the error contract
    audit("model.registered", resource_type="model", resource_id=model.id)
    invalidate_after_commit(MODELS)
    return jsonify(_read(model)), 201


@bp.get("/<uuid:model_id>")
@documented("One model", responses={200: ModelRead})
@require(Permission.FLEET_READ)
def read_model(model_id: uuid.UUID) -> Response:
    return jsonify(_read(_model(model_id)))


@bp.put("/<uuid:model_id>")
@documented(
    "Change a model's details, or disable it",
    description="A null tags or parameters clears them.",
    body=ModelUpdate,
    responses={200: ModelRead},
)
@require(Permission.FLEET_WRITE)
def update_model(model_id: uuid.UUID) -> Response:
    body = load_body(ModelUpdate)
    model = _model(model_id)
    empty: dict[str, object] = {"tags": [], "parameters": {}, "limits": {}}  # null clears
    for field, value in body.model_dump(exclude_unset=True, exclude={"disabled"}).items():
        if field == "limits" and value is not None:
            value = {name: bound for name, bound in value.items() if bound is not None}
        setattr(model, field, empty.get(field) if value is None and field in empty else value)
    if body.disabled is not None:
        set_disabled(session=get_session(), model=model, disabled=body.disabled)
    get_session().flush()
    audit(
        "model.updated",
        resource_type="model",
        resource_id=model.id,
        details={"fields": sorted(body.model_fields_set)},
    )
    invalidate_after_commit(MODELS)
    return jsonify(_read(model))


@bp.delete("/<uuid:model_id>")
@documented("Remove a model from the registry", responses={204: None})
@require(Permission.FLEET_WRITE)
def delete_model(model_id: uuid.UUID) -> tuple[str, int]:
    """Removes the registry entry (and its replica records). A node whose engine still has
    the model registers it again, as discovered, at its next heartbeat."""
    model = _model(model_id)
    get_session().delete(model)
    audit(
        "model.deleted", resource_type="model", resource_id=model_id, details={"name": model.name}
    )
    invalidate_after_commit(MODELS, NODES)
    return "", 204


@bp.get("/<uuid:model_id>/replicas")
@documented("Where a model is, and whether it is loaded", responses={200: Items[ReplicaRead]})
@require(Permission.FLEET_READ)
def list_replicas(model_id: uuid.UUID) -> Response:
    model = _model(model_id)
    rows = replicas_of(session=get_session(), model_id=model.id)
    return jsonify({"items": [ReplicaRead.model_validate(r).model_dump(mode="json") for r in rows]})


@bp.post("/<uuid:model_id>/pull")
@documented(
    "Pull a model onto one node or every online one",
    body=PullRequest,
    responses={
        202: PullAccepted,
        403: "The model's registry is not in pull_registries (registry_not_allowed).",
        404: "No such node.",
        409: "No online node can take the pull, or the node is offline.",
    },
)
@require(Permission.FLEET_WRITE)
def pull_model(model_id: uuid.UUID) -> tuple[Response, int]:
    """Queue a pull on the node's own queue; its worker streams the engine's progress as
    model_update events and records it on the replica."""
    body = load_body(PullRequest)
    model = _model(model_id)
    ensure_pull_allowed(model.name)
    session = get_session()
    query = select(Node).where(Node.status == NodeStatus.ONLINE, Node.drained.is_(False))
    if body.node_id != "all":
        query = select(Node).where(Node.id == body.node_id)
    nodes = list(session.scalars(query.order_by(Node.name)))
    if body.node_id != "all" and not nodes:
        raise NotFound("No such node.")
    if not nodes:
        raise Conflict("No online node can take the pull.", code="no_node_available")
    offline = [n.name for n in nodes if n.status == NodeStatus.OFFLINE]
    if offline:
        raise Conflict(f"Node {offline[0]} is offline.", code="node_offline")
    for node in nodes:
        mark_replica(
            session=session, model_id=model.id, node_id=node.id, status=ReplicaStatus.PULLING
        )
    targets = [(node.id, node.name) for node in nodes]
    name = model.name

    def send() -> None:
        for node_id, node_name in targets:
            publish_to_node(current_celery(), MODEL_PULL, [name, str(node_id)], node_name)

    after_commit(send)
    audit(
        "model.pull_requested",
        resource_type="model",
        resource_id=model.id,
        details={"nodes": [n for _, n in targets]},
    )
    invalidate_after_commit(MODELS, NODES)
    accepted = PullAccepted(model=name, nodes=[NodeRef(id=i, name=n) for i, n in targets])
    return jsonify(accepted.model_dump(mode="json")), 202


@bp.delete("/<uuid:model_id>/replicas/<uuid:node_id>")
@documented(
    "Remove a model from one node's engine",
    responses={202: ReplicaRemovalAccepted},
)
@require(Permission.FLEET_WRITE)
def remove_replica(model_id: uuid.UUID, node_id: uuid.UUID) -> tuple[Response, int]:
    model = _model(model_id)
    session = get_session()
    node = session.get(Node, node_id)
    if node is None or not mark_removing(session=session, model_id=model.id, node_id=node_id):
        raise NotFound("That node has no replica of this model.")
    name, node_name = model.name, node.name

    def send() -> None:
        publish_to_node(current_celery(), MODEL_DELETE, [name, str(node_id)], node_name)

    after_commit(send)
    audit(
        "model.replica_removal_requested",
        resource_type="model",
        resource_id=model.id,
        details={"node": node_name},
    )
    invalidate_after_commit(MODELS, NODES)
    body = ReplicaRemovalAccepted(model=name, node=NodeRef(id=node_id, name=node_name))
    return jsonify(body.model_dump(mode="json")), 202
