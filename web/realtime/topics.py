"""GET /ws: fleet-wide news by topic.

The client sends {"type": "subscribe" | "unsubscribe", "topics": [...]}; the server answers
{"type": "subscribed", "topics": [everything now subscribed]} or an error frame, and the
socket stays open either way. Events arrive as {"topic": ..., "type": ..., ...}.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from simple_websocket import ConnectionClosed

from web.realtime.hub import HubUnavailable, Shape
from web.realtime.relay import Relay
from web.realtime.socket import INTERNAL_ERROR, RelaySocket
from web.security.policy import Permission
from web.security.principal import Principal
from workers.events import STATUS_CHANNEL, TOPIC_CHANNEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topic:
    channel: str
    permission: Permission
    label: bytes  # what events on the channel are tagged with
    own_only: bool = False  # only events about the caller's own requests


TOPICS = {
    "node_status": Topic(
        TOPIC_CHANNEL.format("node_status"), Permission.FLEET_READ, b"node_status"
    ),
    "model_update": Topic(
        TOPIC_CHANNEL.format("model_update"), Permission.FLEET_READ, b"model_update"
    ),
    "inference": Topic(STATUS_CHANNEL, Permission.INFERENCE_READ_OWN, b"inference", own_only=True),
    "inference:all": Topic(STATUS_CHANNEL, Permission.INFERENCE_READ_ALL, b"inference"),
    "system_metrics": Topic(
        TOPIC_CHANNEL.format("system_metrics"), Permission.SYSTEM_STATS, b"system_metrics"
    ),
}
MAX_TOPICS_PER_MESSAGE = len(TOPICS)


class BadMessage(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _tagged(label: bytes, owner: uuid.UUID | None) -> Shape:
    """Frames say their topic; for "inference", only the caller's own requests pass."""
    prefix = b'{"topic":"' + label + b'",'
    marker = f'"user_id":"{owner}"'.encode() if owner else None

    def shape(data: bytes) -> bytes | None:
        if marker is not None and marker not in data:
            return None
        return prefix + data[1:]

    return shape


class TopicSocket:
    def __init__(self, sock: RelaySocket, relay: Relay, principal: Principal) -> None:
        self.sock = sock
        self.relay = relay
        self.principal = principal
        self.topics: set[str] = set()
        self._channels: set[str] = set()
        self._lock = threading.Lock()

    def run(self) -> None:
        sender = threading.Thread(target=self._send_forever, name="ws-topics", daemon=True)
        sender.start()
        try:
            while self.sock.connected:
                message = self.sock.ws.receive(timeout=None)
                if message is None:
                    break
                self._reply(self._handle(message))
        except ConnectionClosed:
            pass
        finally:
            self.sock.mailbox.closed = True
            self.sock.mailbox.wake()
            with self._lock:
                channels = list(self._channels)
                self._channels.clear()
            self.relay.hub.leave(self.sock.mailbox, channels)
            sender.join(timeout=self.sock.settings.ws_cutoff_grace_s + 1)

    def _reply(self, body: dict[str, Any]) -> None:
        self.sock.mailbox.put(json.dumps(body, separators=(",", ":")).encode())

    def _handle(self, message: str | bytes) -> dict[str, Any]:
        try:
            kind, topics = self._parse(message)
            if kind == "ping":
                return {"type": "pong"}
            with self._lock:
                wanted = self.topics | topics if kind == "subscribe" else self.topics - topics
                self._apply(wanted)
            return {"type": "subscribed", "topics": sorted(self.topics)}
        except BadMessage as error:
            return {"type": "error", "code": error.code, "message": error.message}
        except HubUnavailable:
            return {
                "type": "error",
                "code": "events_unavailable",
                "message": "The event feed is unavailable; retry.",
            }

    def _parse(self, message: str | bytes) -> tuple[str, set[str]]:
        try:
            body = json.loads(message)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadMessage("invalid_json", "Messages must be JSON objects.") from None
        if not isinstance(body, dict):
            raise BadMessage("invalid_message", "Messages must be JSON objects.")
        kind = body.get("type")
        if kind == "ping":
            return kind, set()
        if kind not in ("subscribe", "unsubscribe"):
            raise BadMessage(
                "invalid_message", 'type must be "subscribe", "unsubscribe" or "ping".'
            )
        topics = body.get("topics")
        if (
            not isinstance(topics, list)
            or not topics
            or len(topics) > MAX_TOPICS_PER_MESSAGE
            or not all(isinstance(t, str) for t in topics)
        ):
            raise BadMessage("invalid_message", "topics must be a non-empty list of names.")
        unknown = sorted(set(topics) - set(TOPICS))
        if unknown:
            raise BadMessage(
                "unknown_topic", f"Unknown topics {unknown[:5]}; known: {sorted(TOPICS)}."
            )
        if kind == "subscribe":
            denied = sorted(t for t in topics if not self.principal.can(TOPICS[t].permission))
            if denied:
                raise BadMessage("forbidden", f"Not allowed to follow {denied}.")
        return kind, set(topics)

    def _apply(self, wanted: set[str]) -> None:
        """Subscribe to what `wanted` needs and leave what it no longer does. "inference" and
        "inference:all" share a channel: the broader one decides the filter."""
        needed: dict[str, Shape] = {}
        for name in sorted(wanted, key=lambda t: TOPICS[t].own_only):
            topic = TOPICS[name]
            owner = self.principal.user_id if topic.own_only else None
            needed.setdefault(topic.channel, _tagged(topic.label, owner))
        for channel, shape in needed.items():
            self.relay.hub.subscribe(channel, self.sock.mailbox, shape)
            self._channels.add(channel)
        for channel in self._channels - set(needed):
            self.relay.hub.unsubscribe(channel, self.sock.mailbox)
            self._channels.discard(channel)
        self.topics = wanted

    def _send_forever(self) -> None:
        try:
            while not self.sock.mailbox.closed and self.sock.connected:
                items = self.sock.mailbox.take(self.sock.settings.ws_heartbeat_s)
                if self.sock.cut_off_if_overflowed() or not self.sock.access_holds():
                    return
                if self.sock.mailbox.resync_requested:
                    self.sock.mailbox.resync_requested = False
                    self.sock.send_json(
                        {"type": "resync", "message": "Events may have been missed."}
                    )
                if items:
                    self.sock.send_frames(list(items))
                elif self.sock.heartbeat_due():
                    self.sock.send_heartbeat()
        except ConnectionClosed:
            pass
        except Exception:  # the socket must not stay open without its sender
            log.exception("websocket topic sender failed")
            self.sock.close(INTERNAL_ERROR, "internal_error")
