"""GET /ws/inference/<id>: one request's events, live, resumable, exactly once.

Subscribe first, then replay what is stored after `?after=<seq>`, then stream live; any
event at or below the last `seq` sent is dropped, and a jump in `seq` is filled from the
store. The socket closes normally after the request's terminal status. A request that has
finished answers at once: its stored events, or, when those have expired, a `final` frame
with the request as GET /api/v1/inference/requests/<id> shows it.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.exc import SQLAlchemyError

from web.inference.service import final_state
from web.realtime.cursor import EventCursor, Taken
from web.realtime.hub import HubUnavailable
from web.realtime.relay import Relay
from web.realtime.socket import NORMAL, TRY_AGAIN_LATER, RelaySocket
from workers.events import CHANNEL

log = logging.getLogger(__name__)


class RequestStream:
    def __init__(
        self, sock: RelaySocket, relay: Relay, request_id: uuid.UUID, after: int, finished: bool
    ) -> None:
        self.sock = sock
        self.relay = relay
        self.request_id = request_id
        self.cursor = EventCursor(relay.events, request_id, after)
        self.finished_at_connect = finished
        self.ended = False  # the last frame was sent

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
        while not self.ended and self.sock.connected:
            items = self.sock.mailbox.take(self.sock.settings.ws_heartbeat_s)
            self.sock.discard_client_messages()  # this socket takes none
            if self.sock.cut_off_if_overflowed() or not self.sock.access_holds():
                return
            if self.sock.mailbox.resync_requested:
                self.sock.mailbox.resync_requested = False
                self._catch_up()
            self._send(self.cursor.take(items))
            if not items and self.sock.heartbeat_due():
                self.sock.send_heartbeat()
                if self.cursor.quiet():
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
        for page in self.cursor.catch_up():
            self._send(page)

    def _send(self, taken: Taken) -> None:
        if taken:
            self.sock.send_frames([raw for _, raw in taken])
        self.ended = self.cursor.ended

    def _send_final(self) -> None:
        try:
            state = final_state(self.request_id)
        except SQLAlchemyError as error:
            # The client resumes with ?after= once the database answers again.
            log.warning("request %s: final state unavailable: %s", self.request_id, error)
            self.sock.close(TRY_AGAIN_LATER, "database_unavailable")
            return
        if state is None:
            return
        self.sock.send_json({"type": "final", "request": state})
        self.ended = True
