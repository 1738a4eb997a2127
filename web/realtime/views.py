"""The WebSocket routes: /ws/inference/<id> (one request's stream) and /ws (topics).

Both authenticate like the REST API (a JWT or an API key as `Authorization: Bearer`, or as
`?token=` for clients that cannot set headers, such as browsers). A refusal is an error frame
followed by close code 1008, never data. The database session is released once the caller is
known, so an open socket holds no database connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

from flask import Blueprint, Flask, Response, current_app, request
from flask_sock import Sock
from simple_websocket import Server

from web.database import end_unit_of_work
from web.errors import BadRequest, Forbidden
from web.extensions import current_settings
from web.inference.views import visible_request
from web.realtime.relay import current_relay
from web.realtime.socket import RelaySocket
from web.realtime.streams import TERMINAL, RequestStream
from web.realtime.topics import TopicSocket
from web.security.policy import Permission
from web.security.principal import authenticated

bp = Blueprint("realtime", __name__)
sock = Sock()
T = TypeVar("T")


@bp.before_request
def _decline_compression() -> None:
    """Decline permessage-deflate: token frames are a few dozen bytes, and compression would
    cost CPU on every frame and ~300 KB of zlib state per busy socket."""
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)


def _admit(relay_socket: RelaySocket, check: Callable[[], T]) -> T | None:
    """Run the REST checks for this caller; a refusal carries the code and message the REST
    API would have answered with. The database session is released either way."""
    try:
        admitted = check()
    except Exception as error:  # auth errors come from several libraries
        end_unit_of_work(commit=False)
        response = current_app.handle_user_exception(error)
        if not isinstance(response, Response) or response.status_code >= 500:
            raise
        body = (response.get_json(silent=True) or {}).get("error") or {}
        relay_socket.refuse(body.get("code", "refused"), body.get("message", "Refused."))
        return None
    end_unit_of_work()
    return admitted


def _after_seq() -> int:
    raw = request.args.get("after", "0")
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest("after must be a sequence number (>= 0).", code="invalid_parameter")
    return int(raw)


def _open(ws: Server) -> RelaySocket:
    relay = current_relay()
    relay.pulse.start()
    return RelaySocket(ws, current_settings(), relay.sockets)


@sock.route("/ws/inference/<uuid:request_id>", bp=bp)
def request_stream(ws: Server, request_id: uuid.UUID) -> None:
    def check() -> tuple[int, bool]:
        if not authenticated().can(Permission.INFERENCE_READ_OWN):
            raise Forbidden()
        row = visible_request(request_id)
        return _after_seq(), str(row.status) in TERMINAL

    with _open(ws) as relay_socket:
        admitted = _admit(relay_socket, check)
        if admitted is not None:
            after, finished = admitted
            RequestStream(relay_socket, current_relay(), request_id, after, finished).run()


@sock.route("/ws", bp=bp)
def topic_socket(ws: Server) -> None:
    with _open(ws) as relay_socket:
        principal = _admit(relay_socket, authenticated)
        if principal is not None:
            TopicSocket(relay_socket, current_relay(), principal).run()


def init_realtime(app: Flask) -> None:
    settings = app.extensions["settings"]
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": settings.ws_ping_interval_s,
        "max_message_size": settings.ws_max_message_bytes,
    }
    app.register_blueprint(bp)
