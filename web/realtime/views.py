"""The WebSocket routes: /ws/inference/<id> (one request's stream) and /ws (topics).

Both authenticate like the REST API (a JWT or an API key as `Authorization: Bearer`, or as
`?token=` for clients that cannot set headers, such as browsers). A refusal is an error frame
followed by close code 1008, never data. The database session is released once the caller is
known, so an open socket holds no database connection; the credential is checked again while
the socket stays open (web/realtime/access.py).

No exception may leave a handler: once the connection is upgraded, Flask's error response
would be written into the WebSocket stream as garbage. Failures close with 1011 instead.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server

from web.database import end_unit_of_work, get_db
from web.errors import BadRequest, Forbidden
from web.extensions import current_runtime_config, current_settings
from web.inference.quotas import caller_limits
from web.inference.service import followed_request_finished
from web.openapi import SOCKET, documented
from web.realtime.access import Access
from web.realtime.relay import current_relay
from web.realtime.seats import take_seat
from web.realtime.socket import (
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    RelaySocket,
)
from web.realtime.streams import RequestStream
from web.realtime.topics import TopicSocket
from web.schemas.realtime import StreamQuery, TopicQuery
from web.security.policy import Permission
from web.security.principal import Principal, authenticated

log = logging.getLogger(__name__)

bp = Blueprint("realtime", __name__)
sock = Sock()

# OpenAPI has no words for a WebSocket conversation (AsyncAPI does). The document lists each
# socket as what HTTP sees, a GET answered 101, and describes the conversation under
# `x-websocket`: tools skip x- keys, readers find frames and close codes there and in
# docs/realtime.md.
CLOSE_CODES = {
    "1000": "The stream ended (its request finished).",
    "1001": "The server is shutting down; reconnect (and resume with ?after=).",
    "1008": "Refused: no or bad credentials, not allowed, no such request. An error frame "
    "with the REST API's code comes first.",
    "1011": "Internal error.",
    "1013": "Too slow to keep up, or the event feed is down; reconnect and resume. Or, at "
    "the handshake (error frame quota_websockets), the account holds its quota of sockets.",
}
ERROR_FRAME = '{"type": "error", "code": "<the REST API\'s code>", "message": "..."}'


@bp.before_request
def _decline_compression() -> None:
    """Decline permessage-deflate: token frames are a few dozen bytes, and compression would
    cost CPU on every frame and ~300 KB of zlib state per busy socket."""
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)


def _access(principal: Principal) -> Access:
    """The socket's standing, with its seat in the account's WebSocket quota (429
    `quota_websockets` when they are all taken). Called last in a handshake's checks: a
    refusal after it would hold a seat until its lease ran out."""
    settings = current_settings()
    redis = current_app.extensions["redis"]
    mine, key = caller_limits(principal, current_runtime_config())
    quota = min(
        (q for q in (mine.max_websockets, key.max_websockets) if q is not None), default=None
    )
    # A quiet socket wakes (and renews) once per heartbeat interval at least, not per
    # recheck: its seat's lease must outlast the longer of the two, or a starved or quiet
    # socket loses its seat and the quota admits one socket too many.
    renew_s = max(settings.ws_access_recheck_s, settings.ws_heartbeat_s)
    seat = take_seat(redis, principal.user_id, quota, renew_s=renew_s)
    return Access(
        principal,
        expires_at=principal.token_expires_at,
        recheck_s=settings.ws_access_recheck_s,
        redis=redis,
        database=get_db(),
        seat=seat,
    )


def _admit(relay_socket: RelaySocket, check: Callable[[], Any]) -> Any:
    """Run the REST checks for this caller; a refusal carries the code and message the REST
    API would have answered with. The database session is released either way. Returns what
    `check` returned, or None after a refusal."""
    try:
        admitted = check()
        end_unit_of_work()  # its commit may fail too (the database went away meanwhile)
    except Exception as error:  # auth errors come from several libraries
        end_unit_of_work(commit=False)
        response = current_app.handle_user_exception(error)
        if not isinstance(response, Response) or response.status_code in (500, 501, 502):
            log.exception("websocket handshake failed")
            relay_socket.refuse("internal_error", "Something went wrong.", INTERNAL_ERROR)
            return None
        body = (response.get_json(silent=True) or {}).get("error") or {}
        # 429 (a quota) or 503 (a dependency is down): the client may try again later.
        # Otherwise: a refusal.
        again = response.status_code == 429 or response.status_code >= 503
        close_code = TRY_AGAIN_LATER if again else POLICY_VIOLATION
        relay_socket.refuse(
            body.get("code", "refused"), body.get("message", "Refused."), close_code
        )
        return None
    return admitted


def _after_seq() -> int:
    raw = request.args.get("after", "0")
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest("after must be a sequence number (>= 0).", code="invalid_parameter")
    return int(raw)


def _serve(ws: Server, handler: Callable[[RelaySocket], None]) -> None:
    relay = current_relay()
    relay.pulse.start()
    with RelaySocket(ws, current_settings(), relay.sockets) as relay_socket:
        try:
            handler(relay_socket)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("websocket %s failed", request.path)
            relay_socket.close(INTERNAL_ERROR, "internal_error")


@sock.route("/ws/inference/<uuid:request_id>", bp=bp)
@documented(
    "WebSocket: one request's events, live and resumable",
    description="Replays the stored events after `after`, then streams live, each exactly "
    "once; ends with the terminal status and close code 1000. Owner, operators, admins.",
    query=StreamQuery,
    security=SOCKET,
    extensions={
        "x-websocket": {
            "server_frames": {
                "status": "seq, status, attempt, worker, reason, error, error_code",
                "token": "seq, text, attempt",
                "done": "seq, done_reason, eval_count, prompt_eval_count, durations (ns)",
                "heartbeat": "ts (no seq), after WS_HEARTBEAT_S of quiet",
                "final": "request: the request as GET /api/v1/inference/requests/{id} shows it",
                "error": ERROR_FRAME,
            },
            "client_frames": "none (ignored)",
            "close_codes": CLOSE_CODES,
            "see": "docs/realtime.md",
        }
    },
)
def request_stream(ws: Server, request_id: uuid.UUID) -> None:
    def check() -> tuple[Access, int, bool]:
        principal = authenticated()
        if not principal.can(Permission.INFERENCE_READ_OWN):
            raise Forbidden()
        finished = followed_request_finished(request_id)
        after = _after_seq()
        return _access(principal), after, finished

    def handle(relay_socket: RelaySocket) -> None:
        admitted = _admit(relay_socket, check)
        if admitted is not None:
            relay_socket.access, after, finished = admitted
            RequestStream(relay_socket, current_relay(), request_id, after, finished).run()

    _serve(ws, handle)


@sock.route("/ws", bp=bp)
@documented(
    "WebSocket: fleet topics",
    description="Subscribe to node_status, model_update, inference (your own jobs), "
    "inference:all and system_metrics (operators and admins).",
    query=TopicQuery,
    security=SOCKET,
    extensions={
        "x-websocket": {
            "client_frames": {
                "subscribe": '{"type": "subscribe", "topics": [...]}',
                "unsubscribe": '{"type": "unsubscribe", "topics": [...]}',
                "ping": '{"type": "ping"}',
            },
            "server_frames": {
                "subscribed": '{"type": "subscribed", "topics": [...]}',
                "event": '{"topic": "...", "type": "...", ...}',
                "pong": '{"type": "pong"}',
                "error": ERROR_FRAME,
            },
            "close_codes": CLOSE_CODES,
            "see": "docs/realtime.md",
        }
    },
)
def topic_socket(ws: Server) -> None:
    def check() -> Access:
        return _access(authenticated())

    def handle(relay_socket: RelaySocket) -> None:
        access = _admit(relay_socket, check)
        if access is not None:
            relay_socket.access = access
            TopicSocket(relay_socket, current_relay(), access.principal).run()

    _serve(ws, handle)


def init_realtime(app: Flask) -> None:
    settings = app.extensions["settings"]
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": settings.ws_ping_interval_s,
        "max_message_size": settings.ws_max_message_bytes,
    }
    app.register_blueprint(bp)
