"""What every front door shares: start a job from another protocol's request and follow it
to its end through the relay's event stream, in one protocol-neutral shape.

A front door frames these outcomes as its protocol does (NDJSON, SSE, one object).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from flask import request, url_for
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from db.inference import METRIC_COLUMNS as METRICS
from db.models import RequestKind
from web.database import end_unit_of_work
from web.errors import APIError
from web.extensions import current_settings
from web.inference.service import Submission, abandon, accept, final_state
from web.realtime.follow import Quiet, follow
from web.realtime.relay import current_relay

log = logging.getLogger(__name__)

RESTARTED = (
    "the job restarted (an engine fault, or its worker stopping) and its streamed text is "
    "void; the result will be at /api/v1/inference/requests/{}"
)
STREAM_FAILED = (
    "the answer's stream failed here; the job goes on and its result will be at "
    "/api/v1/inference/requests/{}"
)
# The job behind a door's answer, so that a caller cut off mid-stream can find it: its id,
# and a link to it in the native API. Named after X-Request-ID, which is something else: the
# id of one HTTP exchange, for logs.
JOB_ID_HEADER = "X-OllamaMax-Request-ID"
# What a "done" outcome carries besides the metrics.
FINAL_FIELDS = (*METRICS, "done_reason", "tool_calls")


class JobFailed(Exception):
    """The job ended without an answer (failed, cancelled, or restarted mid-stream)."""


def json_object_body() -> dict[str, Any]:
    """The body as a JSON object, whatever Content-Type the client sent (neither Ollama nor
    every OpenAI client sets it)."""
    if not request.get_data():
        raise APIError("missing request body", code="bad_request")
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise APIError("invalid JSON body", code="bad_request")
    # NUL, non-finite numbers, depth and sizes were refused before any view (the input gate,
    # web/validation.py: gate_request), as on the native API.
    return body


def validated(schema: type[BaseModel], body: dict[str, Any], *, known_only: bool) -> Any:
    """`body` as `schema`, or an APIError naming the first bad field. `known_only` drops the
    fields the schema does not know (Ollama ignores them, and its client sends extras)."""
    if known_only:
        body = {k: v for k, v in body.items() if k in schema.model_fields}
    try:
        return schema.model_validate(body)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        raise APIError(
            f"{field}: {first['msg']}" if field else first["msg"],
            details={"field": field} if field else None,
        ) from None


def start(kind: RequestKind, job: Submission, source: str) -> uuid.UUID:
    """Persist and queue the job, and commit now: it must be in the queue before anyone
    waits for its events (and the request's database session must not be held meanwhile)."""
    accepted = accept(kind, job, source=source)
    end_unit_of_work()
    return accepted.id


def job_headers(request_id: uuid.UUID) -> dict[str, str]:
    """`X-OllamaMax-Request-ID: <uuid>` and `Link: </api/v1/inference/requests/<uuid>>;
    rel="related"` (RFC 8288; a Location header would mean a redirect or a creation)."""
    link = url_for("inference.read_request", request_id=request_id)
    return {JOB_ID_HEADER: str(request_id), "Link": f'<{link}>; rel="related"'}


def outcomes(request_id: uuid.UUID) -> Iterator[tuple[str, Any]]:
    """("token", text) ..., then ("done", final fields) or ("error", message); or
    ("restarted", None) when text already yielded was voided by a retry. ("idle", None)
    marks a quiet period, for doors that keep the connection alive (and so notice a caller
    who left while the job was still queued)."""
    done: dict[str, Any] = {}
    sent: list[str] = []  # the text yielded since the last restart
    for event in follow(current_relay(), request_id, current_settings().ws_heartbeat_s):
        if isinstance(event, Quiet):
            state = _stored_end(request_id) if event.ask_database else None
            if state is not None:  # it ended without announcing it (see _from_stored)
                yield from _from_stored(state, "".join(sent))
                return
            yield "idle", None
        elif event["type"] == "token":
            sent.append(event["text"])
            yield "token", event["text"]
        elif event["type"] == "done":
            done = {k: event.get(k) for k in FINAL_FIELDS}
        elif event["type"] == "status":
            status = event.get("status")
            if status == "restarted" and sent:
                sent = []
                yield "restarted", None
            elif status == "completed":
                yield "done", done
                return
            elif status in ("failed", "cancelled"):
                yield "error", event.get("error") or f"request {status}"
                return


def _stored_end(request_id: uuid.UUID) -> dict[str, Any] | None:
    """The job as stored if it has ended; None if not, or if the database cannot say now
    (only a fallback for a lost terminal event: the events go on, and so does the job)."""
    try:
        return final_state(request_id)
    except SQLAlchemyError as error:
        log.warning("request %s: state check failed: %s", request_id, type(error).__name__)
        return None


def _from_stored(state: dict[str, Any], sent: str) -> Iterator[tuple[str, Any]]:
    """The outcome of a job that ended without its last events reaching us (its worker died
    after storing it, or Redis was away and the events wait in the worker's backlog), as
    the database has it: the text not yet sent, then the end."""
    if state["status"] != "completed":
        yield "error", state.get("error") or f"request {state['status']}"
        return
    output = state.get("output") or ""
    if not output.startswith(sent):  # what was sent belonged to an attempt since voided
        yield "restarted", None
        sent = ""
    if output[len(sent) :]:
        yield "token", output[len(sent) :]
    final = {k: state.get(k) for k in (*METRICS, "done_reason")}
    final["tool_calls"] = (state.get("output_message") or {}).get("tool_calls")
    yield "done", final


def collect(request_id: uuid.UUID) -> tuple[str, dict[str, Any]]:
    """The whole answer of a job (for non-streamed calls): its text and final fields. A
    failure to follow it (Redis, the database) is a JobFailed too, saying where the result
    will be: the job goes on, and asking again would run it twice."""
    try:
        return _collect(request_id)
    except JobFailed:
        raise
    except Exception:
        log.exception("request %s: following it failed", request_id)
        raise JobFailed(STREAM_FAILED.format(request_id)) from None


def _collect(request_id: uuid.UUID) -> tuple[str, dict[str, Any]]:
    parts: list[str] = []
    for kind, payload in outcomes(request_id):
        if kind == "idle":
            continue
        if kind == "token":
            parts.append(payload)
        elif kind == "restarted":
            parts.clear()  # the new attempt's text replaces the old
        elif kind == "done":
            return "".join(parts), payload
        else:
            raise JobFailed(str(payload))
    raise JobFailed("the request ended without an answer")


def embedded(request_id: uuid.UUID) -> tuple[list[list[float]], dict[str, Any]]:
    """An embedding job's vectors (one per input) and final fields, once it has ended. The
    vectors are read from the stored result: events carry no vectors (a few kilobytes each,
    for every follower of a topic socket)."""
    _, final = collect(request_id)
    state = _stored_end(request_id)
    if state is None:
        raise JobFailed(STREAM_FAILED.format(request_id))
    vectors = (state.get("output_message") or {}).get("embeddings")
    if not isinstance(vectors, list):
        raise JobFailed(f"request {request_id} ended without embeddings")
    return vectors, final


def for_the_caller(
    request_id: uuid.UUID, frames: Iterator[str], failed: Callable[[str], str]
) -> Iterator[str]:
    """A door's frames as sent: a caller who goes away (the server closes the stream) takes
    their job with them; a failure here (Redis, the database) ends the stream with the door's
    error frame instead, and the job goes on.

    The first item is empty: a WSGI server sends the status and headers (the job's id among
    them) with the first body write, and an empty one sends nothing else (gunicorn writes no
    chunk for it, so the chunked body is not ended). The caller learns the job's id at once,
    not when its first token exists, which may be after a long wait in the queue."""
    try:
        yield ""
        yield from frames
    except GeneratorExit:
        _abandon(request_id)
        raise
    except Exception:
        log.exception("request %s: its answer's stream failed", request_id)
        yield failed(STREAM_FAILED.format(request_id))


def _abandon(request_id: uuid.UUID) -> None:
    """Cancel the job of a caller who went away; if that fails (the database away), the job
    runs to its end and its result is kept, as for any other."""
    try:
        abandon(request_id)
    except Exception as error:
        log.warning(
            "request %s: its caller left, and cancelling it failed: %s",
            request_id,
            type(error).__name__,
        )
