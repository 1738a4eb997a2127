"""The Ollama API on OllamaMax (docs/compat.md): point an Ollama client at us, add a key.

Each /api/generate and /api/chat is a normal job: persisted, queued with its priority,
tracked (source "ollama"), cancelled when a streaming client goes away. Responses are framed
as Ollama frames them: NDJSON chunks, a final chunk with metrics, `{"error": ...}` bodies and
mid-stream error lines. Model management is the fleet's (web/compat/fleet_ops.py): a pull
onto every Ollama node, a removal from every node; what the fleet cannot do (copy, create,
push, embeddings) is refused with a 400 saying why, as Ollama refuses what a model does not
support.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, json, stream_with_context
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from db.fleet import canonical_model_name
from db.inference import METRIC_COLUMNS as METRICS
from db.models import EngineKind, Model, ModelReplica, Node, NodeStatus, RequestKind
from web.compat.catalog import available_models, model_named
from web.compat.errors import door_paths, error_facts, no_route
from web.compat.fleet_ops import FleetFailed, remove_everywhere, start_pull
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
from web.database import get_session
from web.errors import APIError, ServiceUnavailable
from web.inference.views import IDEMPOTENCY
from web.openapi.metadata import Reply, documented
from web.schemas.inference import ChatRequest, EmbedRequest, GenerateRequest
from web.schemas.ollama import (
    OllamaChatBody,
    OllamaChunk,
    OllamaEmbedReply,
    OllamaError,
    OllamaGenerateBody,
    OllamaLegacyEmbedBody,
    OllamaLegacyEmbedReply,
    OllamaModelBody,
    OllamaProgress,
    OllamaPullBody,
    OllamaRunningModels,
    OllamaShowBody,
    OllamaShown,
    OllamaTags,
    OllamaVersion,
)
from web.security.hygiene import body_is_json_whatever_its_content_type
from web.security.policy import Permission
from web.security.principal import require

log = logging.getLogger(__name__)

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
# Ollama's fields the workers cannot carry to the engine: refused rather than dropped, unless
# empty (clients that send them empty lose nothing).
NOT_CARRIED = {
    "template": "jobs run with the model's own template (change it on the engine)",
    "context": "no answer carries one; send the conversation to /api/chat instead",
    "logprobs": "the workers do not return log probabilities",
    "top_logprobs": "the workers do not return log probabilities",
}
GENERATE_NOT_CARRIED = ("template", "context", "logprobs", "top_logprobs")
CHAT_NOT_CARRIED = ("logprobs", "top_logprobs")
# A proxy (nginx) passes each line on as it comes instead of buffering the answer.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The OpenAI door's tool controls, which the shared chat job carries (docs/compat.md).
OPENAI_TOOL_CONTROLS = ("tool_choice", "parallel_tool_calls")
DEFAULT_VERSION = "0.13.0"  # what we answer when no node reports its engine's version
ZERO_TIME = "0001-01-01T00:00:00Z"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


class NotSupported(APIError):
    """An Ollama call the fleet cannot do: a 400 saying why, as Ollama answers a call a model
    does not support (never a 5xx: nothing failed)."""

    status_code = 400
    code = "not_supported"


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
    "A model's details, as recorded",
    tags=["ollama_compat"],
    body=OllamaShowBody,
    responses={200: OllamaShown, 404: "No such model.", 415: None, 422: None},
    error_body=OllamaError,
)
@require(Permission.FLEET_READ)
def show() -> Response:
    """The web never asks an engine itself: this is what the registry holds. The engine's
    own /api/show fields (modelfile, template, parameters, model_info, capabilities) come
    from the model's `parameters.show` where a worker or an operator recorded them, else
    they are empty; `capabilities` is left out rather than guessed."""
    body = json_object_body()
    name = str(body.get("model") or body.get("name") or "")
    if not name:
        raise APIError("model is required")
    model = model_named(name)
    if model is None:
        return _error(f"model '{name}' not found", 404)
    recorded = model.parameters or {}
    engine: dict[str, Any] = recorded.get("show") or {}
    if not isinstance(engine, dict):
        engine = {}
    shown: dict[str, Any] = {
        field: engine[field] if isinstance(engine.get(field), str) else ""
        for field in ("modelfile", "parameters", "template")
    }
    shown["details"] = _details(model)
    info = engine.get("model_info")
    shown["model_info"] = info if isinstance(info, dict) else {}
    capabilities = engine.get("capabilities", recorded.get("capabilities"))
    if isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities):
        shown["capabilities"] = capabilities
    shown["modified_at"] = model.updated_at.isoformat()
    return _json(shown)


@bp.post("/api/generate")
@documented(
    "Generate: a queued, tracked job, framed as Ollama frames it",
    tags=["ollama_compat"],
    body=OllamaGenerateBody,
    headers=IDEMPOTENCY,
    responses=INFERENCE_ANSWERS,
    error_body=OllamaError,
)
@require(Permission.INFERENCE_SUBMIT)
def generate() -> Response:
    body = json_object_body()
    _refuse_not_carried(body, GENERATE_NOT_CARRIED)
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
    headers=IDEMPOTENCY,
    responses=INFERENCE_ANSWERS,
    error_body=OllamaError,
)
@require(Permission.INFERENCE_SUBMIT)
def chat() -> Response:
    body = json_object_body()
    for openai_only in OPENAI_TOOL_CONTROLS:  # not Ollama's: ignored, as Ollama ignores them
        body.pop(openai_only, None)
    _refuse_not_carried(body, CHAT_NOT_CARRIED)
    if not body.get("messages"):
        return _load_reply(str(body.get("model") or ""), body, chat=True)
    return _run(RequestKind.CHAT, validated(ChatRequest, body, known_only=True), body)


def _refuse_not_carried(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    """A field Ollama honours and we cannot is a 400 naming it, not silence; sent empty, it
    asks for nothing and passes."""
    for name in fields:
        value = body.get(name)
        if value is not None and value is not False and value not in ("", [], 0):
            raise APIError(
                f"{name} is not supported by OllamaMax: {NOT_CARRIED[name]}",
                details={"field": name},
            )


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


# --- embeddings -----------------------------------------------------------------------

EMBED_ANSWERS = {
    400: "Bad input (a list of strings or one string; dimensions >= 1).",
    404: "No online node serves the model.",
    415: None,
    422: None,
    500: "The job failed (the engine's message), e.g. an input over the context with "
    "truncate false.",
}


@bp.post("/api/embed")
@documented(
    "Embed: a queued, tracked embedding job, answered as Ollama answers it",
    description='One unit-length vector per input string. An empty input ("" or []) '
    "answers no vectors without a job, as Ollama does.",
    tags=["ollama_compat"],
    body=EmbedRequest,
    headers=IDEMPOTENCY,
    responses={200: OllamaEmbedReply, **EMBED_ANSWERS},
    error_body=OllamaError,
)
@require(Permission.INFERENCE_SUBMIT)
def embed() -> Response:
    body = json_object_body()
    parsed = validated(EmbedRequest, {"input": "", **body}, known_only=True)
    if parsed.input in ("", []):
        return _no_vectors(parsed.model, {"model": parsed.model, "embeddings": []})
    answer = _embedded(parsed)
    if isinstance(answer, Response):
        return answer
    request_id, vectors, final = answer
    reply: dict[str, Any] = {"model": parsed.model, "embeddings": vectors}
    reply.update({name: final[name] for name in EMBED_METRICS if final.get(name)})
    return _with_job(_json(reply), request_id)


@bp.post("/api/embeddings")
@documented(
    "Embeddings (Ollama's older call): one prompt, one vector",
    description="Run as an embedding job of one input; the vector is unit length (Ollama's "
    "older call left it as the model made it).",
    tags=["ollama_compat"],
    body=OllamaLegacyEmbedBody,
    headers=IDEMPOTENCY,
    responses={200: OllamaLegacyEmbedReply, **EMBED_ANSWERS},
    error_body=OllamaError,
)
@require(Permission.INFERENCE_SUBMIT)
def embeddings() -> Response:
    legacy = validated(OllamaLegacyEmbedBody, json_object_body(), known_only=True)
    if not legacy.prompt:
        return _no_vectors(legacy.model, {"embedding": []})
    job = {"model": legacy.model, "input": [legacy.prompt], "options": legacy.options}
    if legacy.keep_alive is not None:
        job["keep_alive"] = legacy.keep_alive
    answer = _embedded(validated(EmbedRequest, job, known_only=True))
    if isinstance(answer, Response):
        return answer
    request_id, vectors, _ = answer
    return _with_job(_json({"embedding": vectors[0] if vectors else []}), request_id)


EMBED_METRICS = ("total_duration", "load_duration", "prompt_eval_count")


def _no_vectors(name: str, reply: dict[str, Any]) -> Response:
    """An empty input: Ollama answers no vectors (after loading the model); so do we, for a
    model the fleet knows."""
    if model_named(name) is None:
        return _error(f"model '{name}' not found", 404)
    return _json(reply)


def _embedded(job: EmbedRequest) -> tuple[uuid.UUID, list[list[float]], dict[str, Any]] | Response:
    request_id = start(RequestKind.EMBED, job, source="ollama")
    try:
        vectors, final = embedded(request_id)
    except JobFailed as error:
        return _with_job(_error(str(error), 500), request_id)
    return request_id, vectors, final


def _with_job(response: Response, request_id: uuid.UUID) -> Response:
    response.headers.update(job_headers(request_id))
    return response


# --- model management, through the fleet ----------------------------------------------


def _model_reference(schema: type[OllamaPullBody] | type[OllamaModelBody]) -> Any:
    """The body, and the model it names: as sent (for messages) and as the registry has it."""
    parsed = validated(schema, json_object_body(), known_only=True)
    name = parsed.model or parsed.name
    if not name:
        raise APIError("model is required")
    return parsed, name, canonical_model_name(name)


@bp.post("/api/pull")
@documented(
    "Pull a model onto every online Ollama node, with Ollama's progress",
    tags=["ollama_compat"],
    body=OllamaPullBody,
    responses={
        200: Reply(OllamaProgress, media_types=("application/x-ndjson", "application/json")),
        409: "The model is disabled, or no online Ollama node can take the pull.",
        415: None,
        422: None,
        500: 'The pull failed on a node (stream false; streamed, a last {"error"} line).',
        503: "The fleet's event feed (Redis) or a node's queue is unavailable.",
    },
    error_body=OllamaError,
)
@require(Permission.FLEET_WRITE)
def pull() -> Response:
    """The fleet's pull (POST /api/v1/models/{id}/pull, to every online, undrained Ollama
    node), registering the model first if the registry does not know it. Streamed, the
    workers' progress comes as Ollama's NDJSON lines, then `{"status": "success"}` once
    every node has it; a caller who goes away stops following, and the pull goes on."""
    parsed, _, name = _model_reference(OllamaPullBody)
    progress = start_pull(name).progress()
    if not parsed.stream:
        try:
            for _ in progress:
                pass
        except FleetFailed as error:
            return _error(str(error), 500)
        return _json({"status": "success"})
    return Response(
        stream_with_context(_progress_lines(name, progress)),
        mimetype="application/x-ndjson",
        headers=STREAM_HEADERS,
    )


def _progress_lines(name: str, progress: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The first item is empty: the status and headers go out at once (see jobs.py:
    for_the_caller). A failure here ends the stream with an error line; the pull goes on."""
    try:
        yield ""
        for line in progress:
            yield json.dumps(line) + "\n"
    except FleetFailed as error:
        yield json.dumps({"error": str(error)}) + "\n"
    except (ServiceUnavailable, SQLAlchemyError, RedisError) as error:
        log.warning("pull of %s: following it failed: %s", name, type(error).__name__)
        yield json.dumps({"error": f"following the pull failed here; it goes on: {error}"}) + "\n"
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()


@bp.delete("/api/delete")
@documented(
    "Remove a model from every node that holds it",
    tags=["ollama_compat"],
    body=OllamaModelBody,
    responses={
        200: Reply(None, "Removed from every online node (an empty body, as Ollama sends)."),
        404: "No node holds the model.",
        409: "A node holding it runs an OpenAI-compatible engine, which cannot remove models.",
        415: None,
        422: None,
        500: "A node failed to remove it, or did not confirm within 60 s.",
        503: "The fleet's event feed (Redis) or a node's queue is unavailable.",
    },
    error_body=OllamaError,
)
@require(Permission.FLEET_WRITE)
def delete() -> Response:
    """The fleet's replica removal on every node that holds the model; answers once every
    online node has removed it (an offline node does it when it returns). The registry keeps
    the model, unavailable."""
    _, sent, name = _model_reference(OllamaModelBody)
    try:
        remove_everywhere(name, sent)
    except FleetFailed as error:
        return _error(str(error), 500)
    return Response(status=200)


REFUSALS = {
    "copy": "copying a model is not supported by OllamaMax: the fleet serves models under the "
    "names their engines pull them by",
    "create": "creating a model is not supported by OllamaMax: create it on an engine host "
    "(the fleet registers it at the worker's next heartbeat), or pull it",
    "push": "pushing a model is not supported by OllamaMax: push it from an engine host",
    "blobs": "uploading blobs is not supported by OllamaMax: models are created on engine "
    "hosts, not through the fleet",
}


def _refusal(call: str, permission: Permission) -> Any:
    """A 400 saying why, to a caller who may otherwise ask for this kind of thing."""

    def refused(**_path: Any) -> Response:
        raise NotSupported(REFUSALS[call])

    refused.__name__ = f"refused_{call}"
    return documented(
        f"Refused (400): {REFUSALS[call].partition(':')[0]}",
        description=REFUSALS[call] + ".",
        tags=["ollama_compat"],
        responses={400: REFUSALS[call] + "."},
        error_body=OllamaError,
    )(require(permission)(refused))


for _path, _call, _permission, _methods in (
    ("/api/copy", "copy", Permission.FLEET_WRITE, ("POST",)),
    ("/api/create", "create", Permission.FLEET_WRITE, ("POST",)),
    ("/api/push", "push", Permission.FLEET_WRITE, ("POST",)),
    ("/api/blobs/<digest>", "blobs", Permission.FLEET_WRITE, ("POST", "HEAD")),
):
    bp.add_url_rule(
        _path,
        endpoint=f"refused_{_path.removeprefix('/api/').split('/')[0]}",
        view_func=_refusal(_call, _permission),
        methods=list(_methods),
    )
