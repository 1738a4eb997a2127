"""One request's events for code that is not a WebSocket (the compatible HTTP front doors):
subscribe first, replay, then live; each event once and in order; None while it is quiet.

A reader that falls behind does not lose anything: its mailbox is replaced and what it missed
is replayed from the store, since an HTTP stream cannot be closed with a code and resumed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from db.models import TERMINAL_STATUSES
from web.realtime.mailbox import Mailbox
from web.realtime.relay import Relay
from workers.events import CHANNEL

PAGE = 1000


def follow(relay: Relay, request_id: uuid.UUID, idle_s: float) -> Iterator[dict[str, Any] | None]:
    channel = CHANNEL.format(request_id)
    mailbox = Mailbox(PAGE * 4)
    relay.hub.subscribe(channel, mailbox)
    last = 0
    try:
        pending: list[bytes] = []
        catch_up = True
        while True:
            if catch_up:
                pending = relay.events.replay_raw(request_id, after=last, count=PAGE)
                catch_up = len(pending) == PAGE
            elif not pending:
                pending = mailbox.take(idle_s)
                if mailbox.overflowed or mailbox.resync_requested:
                    fresh = Mailbox(PAGE * 4)
                    relay.hub.subscribe(channel, fresh)
                    relay.hub.unsubscribe(channel, mailbox)
                    mailbox, pending, catch_up = fresh, [], True
                    continue
                if not pending:
                    yield None
                    continue
            for raw in pending:
                event = json.loads(raw)
                if event["seq"] <= last:
                    continue
                if event["seq"] > last + 1:  # a gap: fetch it before going on
                    catch_up = True
                    break
                last = event["seq"]
                yield event
                if event["type"] == "status" and event.get("status") in TERMINAL_STATUSES:
                    return
            pending = []
    finally:
        relay.hub.unsubscribe(channel, mailbox)
