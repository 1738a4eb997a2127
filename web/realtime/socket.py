"""What every relay socket shares: whole-frame writes, a bounded mailbox, heartbeats, and the
close codes clients can act on."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from flask import request
from simple_websocket import ConnectionClosed, Server
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from config.settings import Settings
from web.metrics import WEBSOCKET_FRAMES, WEBSOCKETS
from web.realtime.access import Access
from web.realtime.mailbox import Mailbox

log = logging.getLogger(__name__)

# Close codes (RFC 6455, section 7.4.1).
NORMAL = 1000  # the stream ended: its request finished
GOING_AWAY = 1001  # the server is shutting down; reconnect elsewhere
POLICY_VIOLATION = 1008  # no or bad credentials, not allowed, no such request
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013  # too slow to keep up, or the event feed is down; reconnect and resume

LAPSED = {
    "token_expired": "The token has expired.",
    "token_revoked": "The token has been revoked.",
    "invalid_api_key": "The API key is invalid, expired or revoked.",
}
CLOSE_HANDSHAKE_S = 2.0  # how long a close waits for the client's answering close frame


class _WholeWrites:
    """simple-websocket writes with `socket.send`, which can write part of a frame to a slow
    client, and its reader thread answers pings on the same socket as we write events. Here
    every write goes out whole and one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    sendall = send

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _WakeMailboxToo:
    """simple-websocket's reader thread sets `ws.event` when a message arrives or the client
    closes. Waking the mailbox as well lets a socket that only sends notice at once, instead
    of at its next heartbeat."""

    def __init__(self, event: threading.Event, mailbox: Mailbox) -> None:
        self._event = event
        self._mailbox = mailbox

    def set(self) -> None:
        self._event.set()
        self._mailbox.wake()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._event, name)


class RelaySocket:
    def __init__(self, ws: Server, settings: Settings, registry: SocketRegistry) -> None:
        self.ws = ws
        self._raw_socket = ws.sock
        with contextlib.suppress(OSError):
            self._raw_socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, settings.ws_socket_send_buffer
            )
        with contextlib.suppress(OSError, AttributeError):
            # A peer that acknowledges nothing for this long (dead, or reading nothing at all)
            # is aborted by the kernel, even while we are blocked writing to it.
            self._raw_socket.setsockopt(
                socket.IPPROTO_TCP,
                socket.TCP_USER_TIMEOUT,
                int(settings.ws_ping_interval_s * 2 * 1000),
            )
        ws.sock = _WholeWrites(ws.sock)
        self.settings = settings
        self.mailbox = Mailbox(settings.ws_send_queue, on_overflow=self._cut_off_soon)
        ws.event = _WakeMailboxToo(ws.event, self.mailbox)
        self.last_sent = time.monotonic()
        self._registry = registry
        self.access: Access | None = None  # set once the caller is admitted
        self.kind = "request" if request.path.startswith("/ws/inference/") else "topics"
        # The labelled child once, not per send: labels() takes the metric's lock, and on the
        # hot path of every socket that alone let a fast reader fall behind (slow-reader test).
        self._frames_sent = WEBSOCKET_FRAMES.labels(self.kind)

    def __enter__(self) -> RelaySocket:
        self._registry.opened(self)
        WEBSOCKETS.labels(self.kind).inc()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.mailbox.closed = True
        if self.access is not None and self.access.seat is not None:
            self.access.seat.release()
        self._registry.closed(self)
        WEBSOCKETS.labels(self.kind).dec()

    @property
    def connected(self) -> bool:
        return bool(self.ws.connected)

    def send_frames(self, frames: Sequence[bytes | str]) -> None:
        """Write frames in one system call. Raises ConnectionClosed once the client is gone."""
        if not frames:
            return
        if not self.ws.connected:
            raise ConnectionClosed(self.ws.close_reason, self.ws.close_message)
        connection = self.ws.ws
        try:
            data = b"".join(
                connection.send(
                    TextMessage(data=frame.decode() if isinstance(frame, bytes) else frame)
                )
                for frame in frames
            )
            self.ws.sock.sendall(data)
        except (OSError, LocalProtocolError) as error:
            # LocalProtocolError: the reader thread began closing (a ping went unanswered).
            self.ws.connected = False
            raise ConnectionClosed() from error
        self.last_sent = time.monotonic()
        self._frames_sent.inc(len(frames))

    def discard_client_messages(self) -> None:
        """For sockets that take no messages: drop what the client sent, so it cannot pile
        up in the library's input buffer."""
        while self.ws.input_buffer:
            self.ws.input_buffer.pop(0)

    def send_json(self, body: dict[str, Any]) -> None:
        self.send_frames([json.dumps(body, separators=(",", ":"), default=str)])

    def access_holds(self) -> bool:
        """False (and the socket refused) once its credential has lapsed."""
        code = self.access.lapsed() if self.access is not None else None
        if code is None:
            return True
        self.refuse(code, LAPSED[code])
        return False

    def heartbeat_due(self) -> bool:
        return time.monotonic() - self.last_sent >= self.settings.ws_heartbeat_s

    def send_heartbeat(self) -> None:
        self.send_json({"type": "heartbeat", "ts": time.time()})

    def refuse(self, code: str, message: str, close_code: int = POLICY_VIOLATION) -> None:
        """An error frame the client can read, then the close code it can act on."""
        try:
            self.send_json({"type": "error", "code": code, "message": message})
        except ConnectionClosed:
            return
        self.close(close_code, code)

    def close(self, close_code: int = NORMAL, reason: str | None = None) -> None:
        if not self.ws.connected:
            return
        with contextlib.suppress(ConnectionClosed, OSError, LocalProtocolError):
            self.ws.close(reason=close_code, message=reason)
        # The closing handshake: wait for the client's close frame before the server closes
        # the TCP connection. Closing first would answer the client's late writes (a pong, its
        # close frame) with a reset, which can discard our close frame before it is read.
        self.ws.thread.join(timeout=CLOSE_HANDSHAKE_S)

    def cut_off_if_overflowed(self) -> bool:
        if not self.mailbox.overflowed:
            return False
        self.close(TRY_AGAIN_LATER, "slow_consumer")
        return True

    def _cut_off_soon(self) -> None:
        """The hub found the mailbox full. The socket's own thread sends the close frame when
        it next wakes; a client that reads nothing at all leaves that thread blocked in a
        write, so after a grace period the connection is shut down under it."""
        log.warning(
            "websocket client too slow: %d frames behind; cutting it off", len(self.mailbox)
        )
        self._registry.cut_off()
        self.mailbox.wake()
        timer = threading.Timer(self.settings.ws_cutoff_grace_s, self._abort)
        timer.daemon = True
        timer.start()

    def _abort(self) -> None:
        if not self.mailbox.closed:
            with contextlib.suppress(OSError):
                self._raw_socket.shutdown(socket.SHUT_RDWR)


class SocketRegistry:
    """This process's open sockets: counts (system_metrics and the benchmark read them), and
    the sockets themselves, to say goodbye when the process stops."""

    def __init__(self) -> None:
        self.open = 0
        self.opened_total = 0
        self.cut_off_total = 0
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[RelaySocket] = weakref.WeakSet()

    def opened(self, sock: RelaySocket) -> None:
        with self._lock:
            self.open += 1
            self.opened_total += 1
            self._sockets.add(sock)

    def going_away(self) -> int:
        """Close every open socket with 1001 (the server is stopping; reconnect and resume
        with `after`), all at once: each close waits for its client's answer."""
        with self._lock:
            sockets = list(self._sockets)
        closers = [
            threading.Thread(target=s.close, args=(GOING_AWAY, "server_shutdown"), daemon=True)
            for s in sockets
        ]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(timeout=CLOSE_HANDSHAKE_S + 1)
        return len(sockets)

    def closed(self, sock: RelaySocket) -> None:
        with self._lock:
            self.open -= 1
            self._sockets.discard(sock)

    def cut_off(self) -> None:
        with self._lock:
            self.cut_off_total += 1
