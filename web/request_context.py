"""Per-request plumbing: the request id, the access log line, body hygiene and the input
gate."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from config.logging import request_id_var
from web.errors import UnsupportedMediaType
from web.metrics import record_request
from web.validation import gate_request

log = logging.getLogger("ollamamax.access")

REQUEST_ID_HEADER = "X-Request-ID"
# Accept a caller's id only if it is safe to echo into headers and logs.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _incoming_request_id() -> str:
    candidate = request.headers.get(REQUEST_ID_HEADER, "")
    return candidate if _VALID_REQUEST_ID.match(candidate) else uuid.uuid4().hex


def _has_body() -> bool:
    return (
        bool(request.content_length)
        or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )


def _normalise_bearer_scheme() -> None:
    """Auth schemes are case-insensitive (RFC 9110); flask-jwt-extended wants "Bearer"."""
    header = request.environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and scheme != "Bearer":
        request.environ["HTTP_AUTHORIZATION"] = f"Bearer {credentials.strip()}"


def _bearer_from_query_on_websockets() -> None:
    """Browsers cannot set headers on a WebSocket: there the token may come as ?token=.
    Done first, so that every later hook (the per-caller rate limit) sees the caller."""
    token = request.args.get("token")
    rule = request.url_rule
    if (
        token
        and rule is not None
        and rule.websocket
        and "HTTP_AUTHORIZATION" not in request.environ
    ):
        request.environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"


def start_request() -> None:
    g.request_started = time.perf_counter()
    _bearer_from_query_on_websockets()
    _normalise_bearer_scheme()
    g.request_id = _incoming_request_id()
    g.request_id_token = request_id_var.set(g.request_id)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge(f"The body is larger than {limit} bytes.")
    # Every body we accept is JSON; anything else is refused before a view sees it. An
    # unknown route or method answers 404/405 instead, whatever the body or query string.
    if request.url_rule is None:
        return
    with_body = request.method in _MUTATING_METHODS and _has_body()
    if with_body and not request.is_json:
        raise UnsupportedMediaType()
    # One input gate for every route, the doors included (their error handlers reshape the
    # 400): NUL, non-finite numbers, nesting depth and sizes (web/validation.py).
    gate_request(with_body=with_body)


def finish_request(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    started = g.get("request_started")
    record_request(response.status_code)
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "route": request.url_rule.rule if request.url_rule else None,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
            "remote_addr": request.remote_addr,
        },
    )
    return response


def end_request(_error: BaseException | None = None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def init_request_context(app: Flask) -> None:
    app.before_request(start_request)
    app.after_request(finish_request)
    app.teardown_request(end_request)
