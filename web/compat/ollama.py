"""The Ollama API on OllamaMax (docs/compat.md): point an Ollama client at us, add a key.

Each /api/generate and /api/chat is a normal job: persisted, queued with its priority,
tracked (source "ollama"), cancelled when a streaming client goes away. Responses are framed
as Ollama frames them: NDJSON chunks, a final chunk with metrics, `{"error": ...}` bodies and
mid-stream error lines.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, json, stream_with_context
from sqlalchemy import select

from db.inference import METRIC_COLUMNS as METRICS
from db.models import EngineKind, Model, ModelReplica, Node, NodeStatus, RequestKind
from web.compat.catalog import available_models, model_named
from web.compat.errors import door_paths, error_facts, no_route
from web.compat.jobs import (
    RESTARTED,
    JobFailed,
    collect,
    for_the_caller,
    job_headers,
    json_object_body,
    outcomes,
    start,
    validated,
)
from web.database import get_session
from web.errors import APIError
from web.openapi.metadata import Reply, documented
from web.schemas.inference import ChatRequest, GenerateRequest
from web.schemas.ollama import (
    OllamaChatBody,
    OllamaChunk,
    OllamaError,
    OllamaGenerateBody,
    OllamaRunningModels,
    OllamaShowBody,
    OllamaShown,
    OllamaTags,
    OllamaVersion,
)
from web.security.hygiene import body_is_json_whatever_its_content_type
from web.security.policy import Permission
from web.security.principal import require

bp = Blueprint("ollama_compat", __name__)
bp.url_value_preprocessor(body_is_json_whatever_its_content_type)

# NDJSON chunks when streaming (a failure mid-stream is a last {"error"} line), else one object.
INFERENCE_ANSWERS = {
    200: Reply(OllamaChunk, media_types=("application/x-ndjson", "application/json")),
    400: "Bad input (Ollama's status for what OllamaMax calls a validation error).",
    404: "No online node serves the model.",
    409: "The Idempotency-Key was used with a different request.",
    415: None,  # a door's body is JSON whatever its Content-Type
    422: None,
    500: "The job failed (stream false).",
}
# A proxy (nginx) passes each line on as it comes instead of buffering the answer.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DEFAULT_VERSION = "0.13.0"  # what we answer when no node reports its engine's version
ZERO_TIME = "0001-01-01T00:00:00Z"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


@bp.errorhandler(Exception)
def _ollama_error(error: Exception) -> Response:
    """Every error as Ollama sends it, `{"error": "<message>"}`: bad input is a 400 and an
    unknown model a 404, as on Ollama."""
    facts = error_facts(error)
    status, message = (400 if facts.status == 422 else facts.status), facts.message
    if facts.code in ("model_unavailable", "model_disabled"):
        status, message = 404, f"model '{(facts.details or {}).get('model', '')}' not found"
    return facts.carry_headers(_error(message, status))


def _ollamas_path(path: str) -> bool:
    """Ollama's paths: / and /api/*, but not the native API's /api/v1."""
    native = path == "/api/v1" or path.startswith("/api/v1/")
    return path == "/" or (path.startswith("/api/") and not native)


door_paths("ollama", _ollamas_path, _ollama_error)
bp.app_errorhandler(404)(no_route)
bp.app_errorhandler(405)(no_route)


@bp.route("/", methods=["GET", "HEAD"])
@documented(
    "Liveness, as Ollama answers it",
    tags=["ollama_compat"],
    responses={200: Reply(str, "Ollama is running", ("text/plain",))},
)
def root() -> Response:
    return Response("Ollama is running", mimetype="text/plain")


@bp.get("/api/version")
@documented(
    "The newest engine version among online nodes",
    tags=["ollama_compat"],
    responses={200: OllamaVersion},
    error_body=OllamaError,
)
def version() -> Response:
    reported = get_session().scalars(
        select(Node.engine_version).where(
            Node.status == NodeStatus.ONLINE, Node.engine_kind == EngineKind.OLLAMA
        )
    )
    versions = [v for v in reported if v and _numbers(v)]
    return _json({"version": max(versions, key=_numbers, default=DEFAULT_VERSION)})


def _numbers(version: str) -> tuple[int, ...]:
    """ "0.13.0" -> (0, 13, 0), so 0.13 outranks 0.6; () for what is not a version."""
    head = version.lstrip("v").split("-")[0].split("+")[0]
    parts = head.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def _details(model: Model) -> dict[str, Any]:
    parameters = model.parameters or {}
    return {
        "parent_model": "",
        "format": parameters.get("format", "gguf"),
        "family": model.family or "",
        "families": [model.family] if model.family else None,
        "parameter_size": parameters.get("parameter_size", ""),
        "quantization_level": parameters.get("quantization_level", ""),
    }


def _digest(model: Model) -> str:
    return (model.digest or "").removeprefix("sha256:")


@bp.get("/api/tags")
@documented(
    "Models available across the fleet",
    tags=["ollama_compat"],
    responses={200: OllamaTags},
    error_body=OllamaError,
)
@require(Permission.FLEET_READ)
def tags() -> Response:
    models = available_models()
    return _json(
        {
            "models": [
                {
                    "name": m.name,
                    "model": m.name,
                    "modified_at": m.updated_at.isoformat(),
                    "size": m.size_bytes or 0,
                    "digest": _digest(m),
                    "details": _details(m),
                }
                for m in models
            ]
        }
    )


@bp.get("/api/ps")
@documented(
    "Models loaded on online nodes",
    tags=["ollama_compat"],
    responses={200: OllamaRunningModels},
    error_body=OllamaError,
)
@require(Permission.FLEET_READ)
def running_models() -> Response:
    rows = get_session().execute(
        select(Model, ModelReplica.size_vram_bytes)
        .join(ModelReplica, ModelReplica.model_id == Model.id)
        .join(Node, Node.id == ModelReplica.node_id)
        .where(ModelReplica.loaded.is_(True), Node.status == NodeStatus.ONLINE)
        .order_by(Model.name)
    )
    seen: dict[str, dict[str, Any]] = {}
    for model, vram in rows:  # loaded on several nodes: one entry, the memory summed
        entry = seen.setdefault(
            model.name,
            {
                "name": model.name,
                "model": model.name,
                "size": model.size_bytes or 0,
                "digest": _digest(model),
                "details": _details(model),
                "expires_at": ZERO_TIME,
                "size_vram": 0,
            },
        )
        entry["size_vram"] += vram or 0
    return _json({"models": list(seen.values())})


@bp.post("/api/show")
@documented(
    "A model's details",
    tags=["ollama_compat"],
    body=OllamaShowBody,
    responses={200: OllamaShown, 404: "No such model.", 415: None, 422: None},
    error_body=OllamaError,
)
@require(Permission.FLEET_READ)
def show() -> Response:
    body = json_object_body()
    name = str(body.get("model") or body.get("name") or "")
    if not name:
        raise APIError("model is required")
    model = model_named(name)
    if model is None:
        return _error(f"model '{name}' not found", 404)
    return _json(
        {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": _details(model),
            "model_info": {},
            "capabilities": ["completion"],
            "modified_at": model.updated_at.isoformat(),
        }
    )


@bp.post("/api/generate")
@documented(
    "Generate: a queued, tracked job, framed as Ollama frames it",
    tags=["ollama_compat"],
    body=OllamaGenerateBody,
    responses=INFERENCE_ANSWERS,
    error_body=OllamaError,
)
@require(Permission.INFERENCE_SUBMIT)
def generate() -> Response:
    body = json_object_body()
    # Ollama's prompt defaults to "" (a load request); its client leaves an unset one out.
    parsed = validated(GenerateRequest, {"prompt": "", **body}, known_only=True)
    if not parsed.prompt and not parsed.images:
        return _load_reply(parsed.model, body)
    return _run(RequestKind.GENERATE, parsed, body)


@bp.post("/api/chat")
@documented(
    "Chat: a queued, tracked job, framed as Ollama frames it",
    tags=["ollama_compat"],
    body=OllamaChatBody,
    responses=INFERENCE_ANSWERS,
    error_body=OllamaError,
)
@require(Permission.INFERENCE_SUBMIT)
def chat() -> Response:
    body = json_object_body()
    if not body.get("messages"):
        return _load_reply(str(body.get("model") or ""), body, chat=True)
    return _run(RequestKind.CHAT, validated(ChatRequest, body, known_only=True), body)


def _load_reply(name: str, body: dict[str, Any], chat: bool = False) -> Response:
    """An empty prompt asks Ollama to load the model; the fleet loads on demand, so this only
    checks that the model exists."""
    if not name:
        raise APIError("model is required")
    model = model_named(name)
    if model is None:
        return _error(f"model '{name}' not found", 404)
    unload = body.get("keep_alive") in (0, "0", "0s")
    reply: dict[str, Any] = {"model": name, "created_at": _now(), "done": True}
    reply["done_reason"] = "unload" if unload else "load"
    if chat:
        reply["message"] = {"role": "assistant", "content": ""}
    else:
        reply["response"] = ""
    return _json(reply)


class _Framer:
    """Turns our events into Ollama's chunks for one request."""

    def __init__(self, kind: str, model: str) -> None:
        self.chat = kind == RequestKind.CHAT
        self.model = model

    def chunk(self, text: str, **final: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.chat:
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["response"] = text
        body["done"] = bool(final)
        body.update(final)
        return body

    def final(self, done: dict[str, Any], text: str = "") -> dict[str, Any]:
        metrics = {name: done[name] for name in METRICS if done.get(name)}
        reason = done.get("done_reason") or "stop"
        body = self.chunk(text, done_reason=reason, **metrics)
        if self.chat and done.get("tool_calls"):  # Ollama puts them on the final message
            body["message"]["tool_calls"] = done["tool_calls"]
        return body


def _whole(framer: _Framer, request_id: uuid.UUID) -> Response:
    """The job's answer as one object (stream false), once it has ended."""
    try:
        text, final = collect(request_id)
    except JobFailed as error:
        return _error(str(error), 500)
    return _json(framer.final(final, text))


def _run(kind: RequestKind, parsed: Any, body: dict[str, Any]) -> Response:
    request_id = start(kind, parsed, source="ollama")
    headers = job_headers(request_id)
    framer = _Framer(kind, str(body.get("model")))
    if body.get("stream") is False:
        whole = _whole(framer, request_id)
        whole.headers.update(headers)
        return whole

    def lines() -> Iterator[str]:
        for kind_, payload in outcomes(request_id):
            if kind_ == "token":
                yield json.dumps(framer.chunk(payload)) + "\n"
            elif kind_ == "done":
                yield json.dumps(framer.final(payload)) + "\n"
            elif kind_ == "restarted":
                # Streamed text cannot be taken back: say so; the job goes on and its
                # result is at GET /api/v1/inference/requests/<id>.
                yield json.dumps({"error": RESTARTED.format(request_id)}) + "\n"
                return
            elif kind_ == "error":  # the status line cannot change any more
                yield json.dumps({"error": payload}) + "\n"
            # "idle": Ollama sends nothing while a model loads; neither do we

    def error_line(message: str) -> str:
        return json.dumps({"error": message}) + "\n"

    answer = for_the_caller(request_id, lines(), error_line)
    return Response(
        stream_with_context(answer),
        mimetype="application/x-ndjson",
        headers={**headers, **STREAM_HEADERS},
    )
