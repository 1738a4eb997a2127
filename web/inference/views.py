"""Submit, list, read and cancel inference requests: /api/v1/inference/*."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify, url_for
from sqlalchemy import select

from db.models import InferenceRequest, RequestKind, RequestStatus
from web.database import get_session
from web.errors import Conflict, NotFound
from web.inference.service import (
    IDEMPOTENCY_KEY,
    WEBHOOK_HEADER,
    Accepted,
    accept,
    cancel,
    visible_request,
)
from web.openapi import Header, documented
from web.pagination import paginate
from web.schemas.common import Page
from web.schemas.inference import (
    CancelAccepted,
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    Links,
    RequestDetail,
    RequestListQuery,
    RequestRead,
    Submitted,
)
from web.security.policy import Permission
from web.security.principal import authenticated, require
from web.validation import load_body, load_query

bp = Blueprint("inference", __name__, url_prefix="/api/v1/inference")

SUBMIT_ANSWERS = {
    202: Submitted,
    200: Submitted,
    400: "The Idempotency-Key is malformed, or the webhook URL is refused "
    "(invalid_webhook_url: not http(s), too long, credentials, an internal address).",
    409: "The model is disabled, no online node serves it (unless the system queues while "
    "unavailable), or the Idempotency-Key was used with a different request.",
}
IDEMPOTENCY = {
    "Idempotency-Key": Header(
        "Send the same key again to get the job it created (200) instead of a second one.",
        {"type": "string", "pattern": IDEMPOTENCY_KEY.pattern},
    ),
    # On every submitting operation of every door (docs/webhooks.md).
    WEBHOOK_HEADER: Header(
        "Where to POST the job, signed, when it ends (a body's webhook_url wins; default: "
        "the API key's). http(s), no credentials, no internal address: else 400.",
        {"type": "string", "maxLength": 2048},
    ),
}
SUBMIT_NOTE = (
    "The job is persisted, then queued; follow it over `links.ws` or read it at "
    "`links.self`. 202: accepted now; 200: the job this Idempotency-Key created earlier."
)


@bp.post("/generate")
@documented(
    "Submit a completion job (Ollama's generate)",
    description=SUBMIT_NOTE,
    body=GenerateRequest,
    headers=IDEMPOTENCY,
    responses=SUBMIT_ANSWERS,
)
@require(Permission.INFERENCE_SUBMIT)
def generate() -> tuple[Response, int]:
    return _submitted(accept(RequestKind.GENERATE, load_body(GenerateRequest)))


@bp.post("/chat")
@documented(
    "Submit a chat job (Ollama's chat)",
    description=SUBMIT_NOTE,
    body=ChatRequest,
    headers=IDEMPOTENCY,
    responses=SUBMIT_ANSWERS,
)
@require(Permission.INFERENCE_SUBMIT)
def chat() -> tuple[Response, int]:
    return _submitted(accept(RequestKind.CHAT, load_body(ChatRequest)))


@bp.post("/embed")
@documented(
    "Submit an embedding job (Ollama's embed)",
    description=SUBMIT_NOTE + " The vectors are in the result's `output_message.embeddings`, "
    "one per input string, L2-normalised.",
    body=EmbedRequest,
    headers=IDEMPOTENCY,
    responses=SUBMIT_ANSWERS,
)
@require(Permission.INFERENCE_SUBMIT)
def embed() -> tuple[Response, int]:
    return _submitted(accept(RequestKind.EMBED, load_body(EmbedRequest)))


def _submitted(job: Accepted) -> tuple[Response, int]:
    links = Links(
        self=url_for("inference.read_request", request_id=job.id), ws=f"/ws/inference/{job.id}"
    )
    body = Submitted(id=job.id, status=job.status, links=links)
    return jsonify(body.model_dump(mode="json")), 202 if job.created else 200


@bp.get("/requests")
@documented(
    "List jobs, newest first",
    description="The caller's own, or everyone's for callers with inference:read_all.",
    query=RequestListQuery,
    responses={200: Page[RequestRead]},
)
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
@documented("One job: its state, output and metrics", responses={200: RequestDetail})
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
@documented(
    "Cancel a job",
    description="A queued job is cancelled at once; a running one stops within a second and "
    "keeps its partial output.",
    responses={202: CancelAccepted, 409: "The job has already ended."},
)
@require(Permission.INFERENCE_READ_OWN)
def cancel_request(request_id: uuid.UUID) -> tuple[Response, int]:
    row = visible_request(request_id)
    principal = authenticated()
    if row.user_id != principal.user_id and not principal.can(Permission.INFERENCE_CANCEL_ALL):
        raise NotFound("No such request.")
    if row.status not in (RequestStatus.QUEUED, RequestStatus.RUNNING):
        raise Conflict(f"The request has already ended ({row.status}).", code="request_ended")
    body = CancelAccepted(id=row.id, status=cancel(row))
    return jsonify(body.model_dump(mode="json")), 202
