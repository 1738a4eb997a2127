"""A WebSocket client for tests: websocket-client, frames as dicts, close codes visible."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

import websocket

Frame = dict[str, Any]


@dataclass
class Received:
    frames: list[Frame] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of_type(self, kind: str) -> list[Frame]:
        return [frame for frame in self.frames if frame.get("type") == kind]

    @property
    def seqs(self) -> list[int]:
        return [frame["seq"] for frame in self.frames if "seq" in frame]

    @property
    def text(self) -> str:
        return "".join(frame["text"] for frame in self.of_type("token"))


class _Socket(websocket.WebSocket):
    """websocket-client answers a server's close frame before handing it over, and loses the
    frame (its close code) when that answer fails: the server waits a few seconds for it
    (CLOSE_HANDSHAKE_S), then drops the connection, and a reader thread starved for longer on
    a loaded machine (200 of them in one relay test) finds the socket reset. The server did
    close properly; the answer is best effort."""

    def send_close(self, status: int = websocket.STATUS_NORMAL, reason: Any = b"") -> None:
        try:
            super().send_close(status, reason)
        except (websocket.WebSocketConnectionClosedException, OSError):
            self.connected = False


def token_of(headers: dict[str, str]) -> str:
    """The bearer token of test headers, for ?token= or the Authorization header."""
    return headers["Authorization"].removeprefix("Bearer ")


def ws_url(base_url: str, path: str) -> str:
    return base_url.replace("http://", "ws://", 1) + path


def connect(
    base_url: str,
    path: str,
    token: str | None = None,
    *,
    header_token: str | None = None,
    timeout: float = 10.0,
    receive_buffer: int | None = None,
) -> websocket.WebSocket:
    headers = [f"Authorization: Bearer {header_token}"] if header_token else None
    if token is not None:
        path += ("&" if "?" in path else "?") + f"token={token}"
    options = ((socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer),) if receive_buffer else ()
    return websocket.create_connection(
        ws_url(base_url, path), timeout=timeout, header=headers, sockopt=options, class_=_Socket
    )


def next_frame(ws: websocket.WebSocket, received: Received | None = None) -> Frame | None:
    """The next text frame as a dict; None once the server has closed (code kept)."""
    while True:
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            if received is not None and len(frame.data) >= 2:
                received.close_code = int.from_bytes(frame.data[:2], "big")
                received.close_reason = frame.data[2:].decode(errors="replace")
            return None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            body: Frame = json.loads(frame.data)
            return body


def read_until_closed(ws: websocket.WebSocket, *, skip_heartbeats: bool = True) -> Received:
    received = Received()
    try:
        while (frame := next_frame(ws, received)) is not None:
            if skip_heartbeats and frame.get("type") == "heartbeat":
                continue
            received.frames.append(frame)
    finally:
        ws.close()
    return received


def send(ws: websocket.WebSocket, body: Any) -> None:
    ws.send(body if isinstance(body, str) else json.dumps(body))


def next_non_heartbeat(ws: websocket.WebSocket) -> Frame | None:
    while (frame := next_frame(ws)) is not None:
        if frame.get("type") != "heartbeat":
            return frame
    return None
