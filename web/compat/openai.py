"""The OpenAI API on OllamaMax (docs/compat.md): point an OpenAI client at `<api>/v1` with an
OllamaMax API key as its key.

/v1/chat/completions and /v1/completions are normal jobs (source "openai"): persisted,
queued with their priority, tracked, cancelled when a streaming client goes away. Streams
are server-sent events ending in `data: [DONE]`; every error is OpenAI's error object.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, stream_with_context
from sqlalchemy import func, select

from db.base import utcnow
from db.fleet import canonical_model_name
from db.models import (
    EngineKind,
    Model,
    ModelReplica,
    Node,
    NodeStatus,
    ReplicaStatus,
    RequestKind,
)
from web.compat.catalog import available_models, model_named
from web.compat.errors import door_paths, error_facts, no_route
from web.compat.jobs import (
    RESTARTED,
    JobFailed,
    collect,
    embedded,
    for_the_caller,
    job_headers,
    json_object_body,
    outcomes,
    start,
    validated,
)
from web.compat.openai_jobs import chat_job, generate_job
from web.database import get_session
from web.errors import APIError
from web.extensions import current_settings
from web.inference.views import IDEMPOTENCY
from web.openapi.metadata import Reply, documented
from web.schemas.inference import ChatRequest, EmbedRequest, NamedToolChoice
from web.schemas.openai import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    OpenAIErrorResponse,
    OpenAIModel,
    OpenAIModelList,
    OpenAISampling,
)
from web.security.hygiene import body_is_json_whatever_its_content_type
from web.security.policy import Permission
from web.security.principal import require

bp = Blueprint("openai_compat", __name__, url_prefix="/v1")
bp.url_value_preprocessor(body_is_json_whatever_its_content_type)

# One object, or (stream true) server-sent events of chunks ending in `data: [DONE]`.
STREAMED_OR_NOT = ("application/json", "text/event-stream")
INFERENCE_ERRORS = {
    400: "Bad input (type invalid_request_error, `param` names the field).",
    404: "No online node serves the model (code model_not_found).",
    409: "The Idempotency-Key was used with a different request.",
    415: None,  # a door's body is JSON whatever its Content-Type
    422: None,  # OpenAI says 400
    502: "The job failed (code request_failed; x-should-retry: false).",
}
FINGERPRINT = "ollamamax"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# OpenAI's error `type` by HTTP status.
ERROR_TYPES = {
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def _error_object(message: str, type_: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@bp.errorhandler(Exception)
def _openai_error(error: Exception) -> Response:
    """Every error as OpenAI's error object; status codes as OpenAI uses them (400 for bad
    input, 404 for an unknown model)."""
    facts = error_facts(error)
    status, code, message = facts.status, facts.code, facts.message
    details = facts.details if isinstance(facts.details, dict) else {}
    param = details.get("field")
    if status == 422:
        status = 400
    if code in ("model_unavailable", "model_disabled"):
        status, code, param = 404, "model_not_found", "model"
        model = details.get("model", "")
        message = f"The model `{model}` does not exist or you do not have access to it."
    elif status == 401:
        code = "invalid_api_key"
    elif status == 429:
        code = "rate_limit_exceeded"
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    body = _error_object(message, ERROR_TYPES.get(status, fallback), code, param)
    return facts.carry_headers(_json(body, status))


def _under_v1(path: str) -> bool:
    """A miss under /v1/ (a model id routing cannot take, a mistyped endpoint, a wrong method)
    answers as OpenAI does."""
    return path.startswith(f"{bp.url_prefix}/")


door_paths("openai", _under_v1, _openai_error)
bp.app_errorhandler(404)(no_route)
bp.app_errorhandler(405)(no_route)


# --- models ---------------------------------------------------------------------------


def _card(model: Model) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": "ollamamax",
    }


@bp.get("/models")
@documented(
    "Models available across the fleet, as OpenAI model objects",
    tags=["openai_compat"],
    responses={200: OpenAIModelList},
    error_body=OpenAIErrorResponse,
)
@require(Permission.FLEET_READ)
def list_models() -> Response:
    return _json({"object": "list", "data": [_card(m) for m in available_models()]})


@bp.get("/models/<path:name>")
@documented(
    "One model",
    tags=["openai_compat"],
    responses={200: OpenAIModel, 404: "No available model of that name (code model_not_found)."},
    error_body=OpenAIErrorResponse,
)
@require(Permission.FLEET_READ)
def read_model(name: str) -> Response:
    model = model_named(name, available_only=True)
    if model is None:
        raise APIError(code="model_unavailable", details={"model": name})
    return _json(_card(model))


# --- framing ---------------------------------------------------------------------------


def _usage(final: dict[str, Any]) -> dict[str, int]:
    prompt = int(final.get("prompt_eval_count") or 0)
    completion = int(final.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(final: dict[str, Any]) -> str:
    if final.get("tool_calls"):
        return "tool_calls"
    return "length" if final.get("done_reason") == "length" else "stop"


def _openai_calls(calls: list[dict[str, Any]], streamed: bool) -> list[dict[str, Any]]:
    """The worker gives every call its id and its index (its place in the answer) once, so a
    call is named alike here, on the Ollama door and in the stored result."""
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        entry = {
            "id": call.get("id") or f"call_{index}",  # results stored before calls had ids
            "type": "function",
            "function": {
                "name": function.get("name", ""),
                "arguments": json.dumps(function.get("arguments") or {}),
            },
        }
        out.append({"index": index, **entry} if streamed else entry)
    return out


class _Framer:
    """One request's answer in OpenAI's shapes: whole, or as stream chunks."""

    def __init__(self, chat: bool, request_id: uuid.UUID, model: str) -> None:
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id.hex}"
        self.object = "chat.completion" if chat else "text_completion"
        self.model = model
        self.created = int(time.time())

    def _envelope(self, object_: str, choices: list[Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }

    def whole(self, text: str, final: dict[str, Any]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(final)}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if final.get("tool_calls"):
                message["tool_calls"] = _openai_calls(final["tool_calls"], streamed=False)
            choice["message"] = message
        else:
            choice["text"] = text
        choice["logprobs"] = None
        return {**self._envelope(self.object, [choice]), "usage": _usage(final)}

    def opening(self) -> str:
        """OpenAI's first chat chunk names the role, with empty content."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}}
        return _event(self._envelope("chat.completion.chunk", [{**choice, "finish_reason": None}]))

    def piece(self, text: str | None = None, final: dict[str, Any] | None = None) -> str:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            delta: dict[str, Any] = {}
            if text is not None:
                delta["content"] = text
            if final and final.get("tool_calls"):
                delta["tool_calls"] = _openai_calls(final["tool_calls"], streamed=True)
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        choice["logprobs"] = None
        choice["finish_reason"] = _finish_reason(final) if final is not None else None
        object_ = "chat.completion.chunk" if self.chat else "text_completion"
        return _event(self._envelope(object_, [choice]))

    def usage(self, final: dict[str, Any]) -> str:
        object_ = "chat.completion.chunk" if self.chat else "text_completion"
        return _event({**self._envelope(object_, []), "usage": _usage(final)})


def _event(body: Any) -> str:
    return f"data: {json.dumps(body)}\n\n"


def _stream_error(message: str, code: str) -> str:
    return _event(_error_object(message, "server_error", code))


# --- endpoints -------------------------------------------------------------------------


@bp.post("/chat/completions")
@documented(
    "Chat completions: a queued, tracked job",
    tags=["openai_compat"],
    body=ChatCompletionRequest,
    headers=IDEMPOTENCY,
    responses={200: Reply(ChatCompletion, media_types=STREAMED_OR_NOT), **INFERENCE_ERRORS},
    error_body=OpenAIErrorResponse,
)
@require(Permission.INFERENCE_SUBMIT)
def chat_completions() -> Response:
    req: ChatCompletionRequest = validated(
        ChatCompletionRequest, json_object_body(), known_only=False
    )
    job = chat_job(req)
    _refuse_forcing_on_ollama(job)
    return _answer(RequestKind.CHAT, job, req, prefix="")


def _refuse_forcing_on_ollama(job: ChatRequest) -> None:
    """Ollama has no tool_choice: a required or named one is honoured by OpenAI-compatible
    engines only. Refused when a node that could take the job now runs Ollama, rather than
    a job that fails (or answers without the call) depending on where it lands."""
    choice = job.tool_choice
    if choice is None or choice in ("none", "auto"):
        return
    heard_since = utcnow() - timedelta(seconds=current_settings().node_stale_after_s)
    ollama_nodes = get_session().scalar(
        select(func.count(Node.id))
        .join(ModelReplica, ModelReplica.node_id == Node.id)
        .join(Model, Model.id == ModelReplica.model_id)
        .where(
            Model.name == canonical_model_name(job.model),
            ModelReplica.status == ReplicaStatus.AVAILABLE,
            Node.status == NodeStatus.ONLINE,
            Node.drained.is_(False),
            Node.last_heartbeat_at > heard_since,
            Node.engine_kind == EngineKind.OLLAMA,
        )
    )
    if not ollama_nodes:
        return  # OpenAI-compatible engines only, or none (then the model's own answer)
    asked = f"function {choice.function.name}" if isinstance(choice, NamedToolChoice) else choice
    raise APIError(
        f"tool_choice {asked} cannot be honoured for {canonical_model_name(job.model)}: it is "
        "served by Ollama engines, which cannot force a tool call. Send tool_choice auto (or "
        "none), or use a model served by OpenAI-compatible engines only.",
        code="unsupported_value",
        details={"field": "tool_choice"},
    )


@bp.post("/completions")
@documented(
    "Completions: a queued, tracked job (raw prompt, no template)",
    tags=["openai_compat"],
    body=CompletionRequest,
    headers=IDEMPOTENCY,
    responses={200: Reply(Completion, media_types=STREAMED_OR_NOT), **INFERENCE_ERRORS},
    error_body=OpenAIErrorResponse,
)
@require(Permission.INFERENCE_SUBMIT)
def completions() -> Response:
    req: CompletionRequest = validated(CompletionRequest, json_object_body(), known_only=False)
    job = generate_job(req)
    return _answer(RequestKind.GENERATE, job, req, prefix=job.prompt if req.echo else "")


@bp.post("/embeddings")
@documented(
    "Embeddings: a queued, tracked embedding job",
    description="One unit-length vector per input string; `encoding_format: base64` sends "
    "each as little-endian float32 (what the official client asks for by default).",
    tags=["openai_compat"],
    body=EmbeddingsRequest,
    headers=IDEMPOTENCY,
    responses={200: EmbeddingsResponse, **INFERENCE_ERRORS},
    error_body=OpenAIErrorResponse,
)
@require(Permission.INFERENCE_SUBMIT)
def embeddings() -> Response:
    req: EmbeddingsRequest = validated(EmbeddingsRequest, json_object_body(), known_only=False)
    job = EmbedRequest(
        model=req.model, input=req.input, dimensions=req.dimensions, priority=req.priority
    )
    request_id = start(RequestKind.EMBED, job, source="openai")
    headers = job_headers(request_id)
    try:
        vectors, final = embedded(request_id)
    except JobFailed as error:
        body = _error_object(str(error), "server_error", "request_failed")
        return _json(body, 502, headers={**headers, "x-should-retry": "false"})
    data = [
        {"object": "embedding", "index": index, "embedding": _encoded(vector, req.encoding_format)}
        for index, vector in enumerate(vectors)
    ]
    tokens = int(final.get("prompt_eval_count") or 0)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json(
        {"object": "list", "data": data, "model": req.model, "usage": usage}, headers=headers
    )


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _answer(kind: RequestKind, job: Any, req: OpenAISampling, prefix: str) -> Response:
    request_id = start(kind, job, source="openai")
    headers = job_headers(request_id)
    framer = _Framer(kind == RequestKind.CHAT, request_id, req.model)
    if not req.stream:
        try:
            text, final = collect(request_id)
        except JobFailed as error:
            # A finished job: asking again would run it again, so tell clients not to retry.
            body = _error_object(str(error), "server_error", "request_failed")
            return _json(body, 502, headers={**headers, "x-should-retry": "false"})
        return _json(framer.whole(prefix + text, final), headers=headers)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    answer = for_the_caller(
        request_id,
        _stream_events(framer, request_id, prefix, include_usage),
        lambda message: _stream_error(message, "stream_failed"),
    )
    return Response(
        stream_with_context(answer),
        mimetype="text/event-stream",
        headers={**headers, **SSE_HEADERS},
    )


def _stream_events(
    framer: _Framer, request_id: uuid.UUID, prefix: str, include_usage: bool
) -> Iterator[str]:
    """The job's outcomes as OpenAI's server-sent events."""
    if framer.chat:
        yield framer.opening()
    if prefix:
        yield framer.piece(prefix)
    for kind, payload in outcomes(request_id):
        if kind == "idle":  # an SSE comment: proxies keep the line, we see a caller leave
            yield ": keep-alive\n\n"
        elif kind == "token":
            yield framer.piece(payload)
        elif kind == "done":
            yield framer.piece(None, payload)
            if include_usage:
                yield framer.usage(payload)
            yield "data: [DONE]\n\n"
        elif kind == "restarted":
            yield _stream_error(RESTARTED.format(request_id), "job_restarted")
            return
        else:
            yield _stream_error(str(payload), "request_failed")
