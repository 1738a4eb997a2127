"""Submit, list, read and cancel inference requests: /api/v1/inference/*."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify, url_for
from sqlalchemy import select

from db.models import InferenceRequest, RequestKind, RequestStatus
from web.database import get_session
from web.errors import Conflict, NotFound
from web.inference.submission import cancel, submit
from web.pagination import paginate
from web.schemas.inference import ChatRequest, GenerateRequest, RequestListQuery, RequestRead
from web.security.policy import Permission
from web.security.principal import authenticated, require
from web.validation import load_body, load_query

bp = Blueprint("inference", __name__, url_prefix="/api/v1/inference")


@bp.post("/generate")
@require(Permission.INFERENCE_SUBMIT)
def generate() -> tuple[Response, int]:
    return submit(RequestKind.GENERATE, load_body(GenerateRequest))


@bp.post("/chat")
@require(Permission.INFERENCE_SUBMIT)
def chat() -> tuple[Response, int]:
    return submit(RequestKind.CHAT, load_body(ChatRequest))


def visible_request(request_id: uuid.UUID) -> InferenceRequest:
    """The request if the caller may see it; 404 otherwise (ids cannot be probed)."""
    row = get_session().get(InferenceRequest, request_id)
    principal = authenticated()
    if row is None or (
        row.user_id != principal.user_id and not principal.can(Permission.INFERENCE_READ_ALL)
    ):
        raise NotFound("No such request.")
    return row


@bp.get("/requests")
@require(Permission.INFERENCE_READ_OWN)
def list_requests() -> Response:
    query = load_query(RequestListQuery)
    principal = authenticated()
    conditions = []
    if not principal.can(Permission.INFERENCE_READ_ALL):
        conditions.append(InferenceRequest.user_id == principal.user_id)
    if query.status:
        conditions.append(InferenceRequest.status == query.status)
    if query.model:
        conditions.append(InferenceRequest.model_name == query.model)
    if query.since:
        conditions.append(InferenceRequest.created_at >= query.since)
    if query.until:
        conditions.append(InferenceRequest.created_at < query.until)
    body = paginate(
        get_session(),
        select(InferenceRequest).where(*conditions),
        (InferenceRequest.created_at.desc(), InferenceRequest.id),
        query,
        RequestRead,
    )
    return jsonify(body)


@bp.get("/requests/<uuid:request_id>")
@require(Permission.INFERENCE_READ_OWN)
def read_request(request_id: uuid.UUID) -> Response:
    row = visible_request(request_id)
    body = RequestRead.model_validate(row).model_dump(mode="json")
    body["links"] = {
        "self": url_for("inference.read_request", request_id=row.id),
        "ws": f"/ws/inference/{row.id}",
    }
    return jsonify(body)


@bp.post("/requests/<uuid:request_id>/cancel")
@require(Permission.INFERENCE_READ_OWN)
def cancel_request(request_id: uuid.UUID) -> tuple[Response, int]:
    row = visible_request(request_id)
    principal = authenticated()
    if row.user_id != principal.user_id and not principal.can(Permission.INFERENCE_CANCEL_ALL):
        raise NotFound("No such request.")
    if row.status not in (RequestStatus.QUEUED, RequestStatus.RUNNING):
        raise Conflict(f"The request has already ended ({row.status}).", code="request_ended")
    status = cancel(row)
    return jsonify({"id": str(row.id), "status": status}), 202
