"""GET /ws/inference/<id>: one request's events, live, resumable, exactly once.

Subscribe first, then replay what is stored after `?after=<seq>`, then stream live; any
event at or below the last `seq` sent is dropped, and a jump in `seq` is filled from the
store. The socket closes normally after the request's terminal status. A request that has
finished answers at once: its stored events, or, when those have expired, a `final` frame
with the request as GET /api/v1/inference/requests/<id> shows it.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from db.models import TERMINAL_STATUSES
from web.inference.service import final_state
from web.realtime.hub import HubUnavailable
from web.realtime.relay import Relay
from web.realtime.socket import NORMAL, TRY_AGAIN_LATER, RelaySocket
from workers.events import CHANNEL

log = logging.getLogger(__name__)

# Quiet heartbeats between database checks of a stream's request (randomised up to twice).
DB_CHECK_EVERY = 2
REPLAY_PAGE = 1000  # stored events read and sent at a time


class RequestStream:
    def __init__(
        self, sock: RelaySocket, relay: Relay, request_id: uuid.UUID, after: int, finished: bool
    ) -> None:
        self.sock = sock
        self.relay = relay
        self.request_id = request_id
        self.last_seq = after
        self.finished_at_connect = finished
        self.ended = False

    def run(self) -> None:
        channel = CHANNEL.format(self.request_id)
        try:
            self.relay.hub.subscribe(channel, self.sock.mailbox)
        except HubUnavailable:
            self.sock.refuse(
                "events_unavailable", "The event feed is unavailable; retry.", TRY_AGAIN_LATER
            )
            return
        try:
            self._stream()
        finally:
            self.relay.hub.unsubscribe(channel, self.sock.mailbox)

    def _stream(self) -> None:
        self._catch_up()
        if not self.ended and self.finished_at_connect:
            self._send_final()
        quiet_heartbeats = 0
        # Spread the database checks of sockets that connected together.
        check_every = DB_CHECK_EVERY + random.randrange(DB_CHECK_EVERY)  # noqa: S311
        while not self.ended and self.sock.connected:
            items = self.sock.mailbox.take(self.sock.settings.ws_heartbeat_s)
            self.sock.discard_client_messages()  # this socket takes none
            if self.sock.cut_off_if_overflowed() or not self.sock.access_holds():
                return
            if self.sock.mailbox.resync_requested:
                self.sock.mailbox.resync_requested = False
                self._catch_up()
            self._send(items)
            if items:
                quiet_heartbeats = 0
            elif self.sock.heartbeat_due():
                self.sock.send_heartbeat()
                quiet_heartbeats += 1
                if quiet_heartbeats % check_every == 0:
                    self._end_if_finished_in_database()
        if self.ended:
            self.sock.close(NORMAL, "finished")

    def _end_if_finished_in_database(self) -> None:
        """A worker that died between saving its result and announcing it leaves no terminal
        event: after a quiet spell, the database has the last word."""
        try:
            finished = final_state(self.request_id) is not None
        except SQLAlchemyError as error:
            log.warning("request %s: state check failed: %s", self.request_id, error)
            return
        if finished:
            self._catch_up()
            if not self.ended:
                self._send_final()

    def _catch_up(self) -> None:
        """Send the stored events after the last seq sent, a page at a time."""
        while not self.ended:
            page = self.relay.events.replay_raw(
                self.request_id, after=self.last_seq, count=REPLAY_PAGE
            )
            self._send(page)
            if len(page) < REPLAY_PAGE:
                return

    def _send(self, items: list[bytes]) -> None:
        frames: list[bytes] = []
        for raw in items:
            if self.ended:
                break
            event = json.loads(raw)
            seq = event.get("seq", 0)
            if seq <= self.last_seq:
                continue  # seen already (replay and live overlap)
            if seq > self.last_seq + 1:  # missed something (a feed hiccup): fill the gap
                missing = self.relay.events.replay_raw(
                    self.request_id, after=self.last_seq, count=seq - self.last_seq - 1
                )
                for stored in missing:
                    self._take(json.loads(stored), stored, frames)
                # Whatever is still missing was trimmed from the store: it cannot come back.
            self._take(event, raw, frames)
        self.sock.send_frames(frames)

    def _take(self, event: dict[str, Any], raw: bytes, frames: list[bytes]) -> None:
        if self.ended or event["seq"] <= self.last_seq:
            return
        frames.append(raw)
        self.last_seq = event["seq"]
        if event.get("type") == "status" and event.get("status") in TERMINAL_STATUSES:
            self.ended = True

    def _send_final(self) -> None:
        state = final_state(self.request_id)
        if state is None:
            return
        self.sock.send_json({"type": "final", "request": state})
        self.ended = True
