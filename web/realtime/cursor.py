"""Reading one request's numbered events exactly once, in order: the rules every reader
shares (the WebSocket relay and the Ollama and OpenAI doors).

A reader subscribes to the live channel first, then replays the store after its last `seq`,
so live and stored events overlap: anything at or below the last `seq` taken is dropped. A
jump in `seq` (a live message lost, a reader resubscribed) is filled from the store;
whatever the store no longer has was trimmed and cannot come back. A terminal status ends
the stream. And since a worker that died between saving its result and announcing it
leaves no terminal event, a reader that has heard nothing for a few quiet periods asks the
database whether the request ended (`quiet`).

Stale attempts are fenced off here too. A worker whose lease was swept (or which handed the
job back) may still publish a few events before it notices, or late (events it held through
a Redis outage), while a newer attempt runs. The database refuses its
result; readers drop its events: once a reader has taken an event of attempt N (`restarted`
announces N as soon as the job is requeued), a later event of an attempt below N is read
(`last_seq` moves past it, so no gap is filled for it) but not handed on. Events without an
`attempt` pass. A terminal status always passes: it is published only after the statement
that ended the row, so it is never a stale worker's, whatever attempt it names (a cancel
names the attempt its caller read before it). Events of the old attempt numbered *before*
`restarted` pass, as before: `restarted` tells readers to drop the text they got so far. A
reader resuming after `seq` S learns the attempt from event S itself, read with the first
page of its replay (no extra round trip).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

from db.models import TERMINAL_STATUSES
from workers.events import EventLog

REPLAY_PAGE = 1000  # stored events read at a time
QUIET_CHECKS_EVERY = 2  # quiet periods between database checks (randomised up to twice)

Taken = list[tuple[dict[str, Any], bytes]]  # (event, the JSON it was published as)


class EventCursor:
    def __init__(self, events: EventLog, request_id: uuid.UUID, after: int = 0) -> None:
        self.events = events
        self.request_id = request_id
        self.last_seq = after
        self.ended = False
        self.attempt = 0  # the newest attempt taken: older ones are stale workers'
        self._resumed = after > 0  # the first replay also reads event `after`, for its attempt
        self._quiet = 0
        # Readers that started together check the database at different times.
        self._check_every = QUIET_CHECKS_EVERY + random.randrange(QUIET_CHECKS_EVERY)  # noqa: S311

    def catch_up(self) -> Iterator[Taken]:
        """Every stored event after the last one taken, a page at a time (a reader sends
        each before the next is read)."""
        while not self.ended:
            if self._resumed:
                self._resumed = False
                page = self._resume()
            else:
                page = self.events.replay_raw(
                    self.request_id, after=self.last_seq, count=REPLAY_PAGE
                )
            yield self.take(page)
            if len(page) < REPLAY_PAGE:
                return

    def _resume(self) -> list[bytes]:
        """The first page after `after`, read from event `after` itself, which the reader
        took on an earlier connection: its attempt is the newest that reader was given."""
        page = self.events.replay_raw(
            self.request_id, after=self.last_seq - 1, count=REPLAY_PAGE + 1
        )
        if page:
            first = json.loads(page[0])
            if first.get("seq") == self.last_seq:
                self._note_attempt(first)
                return page[1:]
        return page[:REPLAY_PAGE]

    def take(self, items: list[bytes]) -> Taken:
        """The events among `items` (live or stored) not taken yet, in order, with any gap
        before them filled from the store; nothing after a terminal status."""
        taken: Taken = []
        for raw in items:
            if self.ended:
                break
            event = json.loads(raw)
            seq = event.get("seq", 0)
            if seq <= self.last_seq:
                continue  # seen already (replay and live overlap)
            if seq > self.last_seq + 1:
                missing = self.events.replay_raw(
                    self.request_id, after=self.last_seq, count=seq - self.last_seq - 1
                )
                for stored in missing:
                    self._take(json.loads(stored), stored, taken)
            self._take(event, raw, taken)
        if taken:
            self._quiet = 0
        return taken

    def quiet(self) -> bool:
        """Note a quiet period; True when the database should be asked whether it ended."""
        self._quiet += 1
        return self._quiet % self._check_every == 0

    def _take(self, event: dict[str, Any], raw: bytes, taken: Taken) -> None:
        if self.ended or event["seq"] <= self.last_seq:
            return
        self.last_seq = event["seq"]
        terminal = event.get("type") == "status" and event.get("status") in TERMINAL_STATUSES
        if not terminal and self._stale(event):
            return  # read, not handed on: a stale attempt's
        taken.append((event, raw))
        self._note_attempt(event)
        if terminal:
            self.ended = True

    def _stale(self, event: dict[str, Any]) -> bool:
        attempt = event.get("attempt")
        return isinstance(attempt, int) and attempt < self.attempt

    def _note_attempt(self, event: dict[str, Any]) -> None:
        attempt = event.get("attempt")
        if isinstance(attempt, int) and attempt > self.attempt:
            self.attempt = attempt
