"""WebSocket helpers: connect with a bearer header, read JSON frames against a deadline."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from typing import Any

import websocket

from ops.smoke.api import MAX_RATE_LIMIT_WAIT_S, bearer
from ops.smoke.outcomes import Failed

Frame = dict[str, Any]
NORMAL_CLOSE = 1000


def ws_url(base_url: str, path: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url.removeprefix("https://") + path
    return "ws://" + base_url.removeprefix("http://") + path


class Socket:
    """One WebSocket; frames as dicts; the server's close code kept once it closes."""

    def __init__(
        self,
        base_url: str,
        path: str,
        token: str,
        timeout_s: float,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        header = [f"{name}: {value}" for name, value in bearer(token).items()]
        header.append("User-Agent: ollamamax-smoke/1")
        for attempt in range(3):
            try:
                self.ws = websocket.create_connection(
                    ws_url(base_url, path),
                    timeout=timeout_s,
                    header=header,
                    sslopt={"context": tls} if tls else None,
                )
                break
            except websocket.WebSocketBadStatusException as error:
                # The handshake goes through the rate limiter like any call.
                if error.status_code != 429 or attempt == 2:
                    raise Failed(f"WebSocket {path} refused: HTTP {error.status_code}") from None
                time.sleep(min(MAX_RATE_LIMIT_WAIT_S, 1.0 + attempt))
        self.path = path
        self.close_code: int | None = None
        self.close_reason = ""

    def send(self, body: Frame) -> None:
        self.ws.send(json.dumps(body))

    def next(self, deadline: float) -> Frame | None:
        """The next JSON frame, or None once the server has closed; Failed at the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failed(f"no frame on {self.path} before the deadline")
            self.ws.settimeout(remaining)
            try:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                raise Failed(f"no frame on {self.path} before the deadline") from None
            except (websocket.WebSocketConnectionClosedException, OSError):
                return None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if len(frame.data) >= 2:
                    self.close_code = int.from_bytes(frame.data[:2], "big")
                    self.close_reason = frame.data[2:].decode(errors="replace")
                return None
            if opcode == websocket.ABNF.OPCODE_TEXT:
                body = json.loads(frame.data)
                if isinstance(body, dict):
                    return body

    def next_non_heartbeat(self, deadline: float) -> Frame | None:
        while (frame := self.next(deadline)) is not None:
            if frame.get("type") != "heartbeat":
                return frame
        return None

    def close(self) -> None:
        with contextlib.suppress(websocket.WebSocketException, OSError):
            self.ws.close()

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
