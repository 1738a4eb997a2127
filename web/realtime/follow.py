"""One request's events for code that is not a WebSocket (the compatible HTTP front doors):
subscribe first, replay, then live, each event once and in order (web/realtime/cursor.py),
with a `Quiet` marker for each quiet period.

A reader that falls behind does not lose anything: its mailbox is replaced and what it missed
is replayed from the store, since an HTTP stream cannot be closed with a code and resumed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from web.realtime.cursor import EventCursor
from web.realtime.mailbox import Mailbox
from web.realtime.relay import Relay
from workers.events import CHANNEL

MAILBOX = 4000  # live events held for a reader between its reads


@dataclass(frozen=True)
class Quiet:
    """Nothing arrived for a while; `ask_database`: time to check whether the request
    ended without announcing it (a worker died between storing and publishing)."""

    ask_database: bool


def follow(relay: Relay, request_id: uuid.UUID, idle_s: float) -> Iterator[dict[str, Any] | Quiet]:
    channel = CHANNEL.format(request_id)
    mailbox = Mailbox(MAILBOX)
    relay.hub.subscribe(channel, mailbox)
    cursor = EventCursor(relay.events, request_id)
    try:
        for page in cursor.catch_up():
            yield from (event for event, _ in page)
        while not cursor.ended:
            items = mailbox.take(idle_s)
            if mailbox.overflowed or mailbox.resync_requested:
                fresh = Mailbox(MAILBOX)
                relay.hub.subscribe(channel, fresh)
                relay.hub.unsubscribe(channel, mailbox)
                mailbox = fresh
                for page in cursor.catch_up():
                    yield from (event for event, _ in page)
                continue
            if not items:
                yield Quiet(ask_database=cursor.quiet())
                continue
            yield from (event for event, _ in cursor.take(items))
    finally:
        relay.hub.unsubscribe(channel, mailbox)
