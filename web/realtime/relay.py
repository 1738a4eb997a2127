"""The relay's per-process parts, built once per web process and kept on the app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from web.realtime.hub import Hub
from web.realtime.pulse import Pulse
from web.realtime.socket import SocketRegistry
from workers.events import EventLog


@dataclass
class Relay:
    hub: Hub
    events: EventLog
    sockets: SocketRegistry
    pulse: Pulse


def current_relay() -> Relay:
    relay: Relay = current_app.extensions["relay"]
    return relay
