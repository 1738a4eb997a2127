"""A running job's events on their way to readers, through a Redis outage.

Readers must get a job's events in order and each once. While Redis cannot be reached, the
events wait in the job's `JobEvents` and go out in order when it answers again (numbered
then, by the publish script, as ever). A round trip that failed may still have run, so each
event carries a mark, (attempt, n): the events sent again are skipped by the script when
the stream already holds them (workers/events.py).

An outage is transient for a running job up to EVENT_HOLD_S: past it, `EventsOnHold` tells
the task to hand the job back to the queue (a retry, not a failure). Events of a job that
ended during an outage (its result is stored) go to the process's `Backlog`, which publishes
them when Redis returns; a reader that got nothing meanwhile finds the stored result anyway
(web/realtime/cursor.py asks the database after a quiet spell). A job handed back is not
announced late: its next attempt says `restarted` itself, and readers drop what the old
attempt's backlog brings after that (its events carry the older attempt).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from typing import Any

from redis.exceptions import RedisError

from workers.events import Event, EventLog

log = logging.getLogger(__name__)

RETRY_S = 0.5  # how often a job, or the backlog, tries Redis again during an outage


class EventsOnHold(Exception):
    """Redis has been unreachable for longer than a running job may hold its events."""


class JobEvents:
    """The events of one attempt at one job, published in order, held while Redis is away."""

    def __init__(
        self,
        events: EventLog,
        backlog: Backlog,
        request_id: uuid.UUID,
        attempt: int,
        hold_s: float,
    ) -> None:
        self.events, self.backlog = events, backlog
        self.request_id, self.attempt, self.hold_s = request_id, attempt, hold_s
        self.held: list[Event] = []
        self.numbered = 0
        self.down_since: float | None = None
        self.next_try = 0.0

    def ready(self) -> bool:
        """False while Redis is away and the next try is not due: the runner then keeps its
        text for one event later instead of holding many small ones."""
        return self.down_since is None or time.monotonic() >= self.next_try

    def publish(self, event_type: str, **fields: Any) -> None:
        """Publish an event after any held ones; hold them all if Redis is unreachable.
        Raises EventsOnHold once that has lasted longer than EVENT_HOLD_S."""
        self._hold([Event(self.request_id, event_type, fields)])
        if self._flush([]):
            return
        assert self.down_since is not None
        if time.monotonic() - self.down_since > self.hold_s:
            raise EventsOnHold(
                f"Redis unreachable for {time.monotonic() - self.down_since:.1f} s "
                f"({len(self.held)} event(s) held)"
            )

    def finish(self, events: list[Event], delete: list[str], *, or_later: bool = True) -> None:
        """The job's last events, once its outcome is stored, and keys to delete with them:
        published now, or (`or_later`) by the process's backlog when Redis returns; else
        dropped. Never raises."""
        self._hold(events)
        if not self._flush(delete, force=True):
            if or_later:
                self.backlog.add(self.held, delete, self.down_since)
            self.held = []

    def _hold(self, events: list[Event]) -> None:
        for item in events:
            self.numbered += 1
            self.held.append(item._replace(mark=f"{self.attempt}:{self.numbered}"))

    def _flush(self, delete: list[str], *, force: bool = False) -> bool:
        if not (force or self.ready()):
            return False
        retrying = self.down_since is not None
        try:
            self.events.publish_many(self.held, delete=delete, once=retrying)
        except RedisError as error:
            now = time.monotonic()
            if not retrying:
                log.warning(
                    "request %s: Redis unreachable, holding its events: %s", self.request_id, error
                )
                self.down_since = now
            self.next_try = now + RETRY_S
            return False
        if retrying:
            assert self.down_since is not None
            log.info(
                "request %s: Redis is back; published %d held event(s) after %.1f s",
                self.request_id,
                len(self.held),
                time.monotonic() - self.down_since,
            )
        self.held, self.down_since = [], None
        return True


class Backlog:
    """Events of jobs that ended while Redis was unreachable, published by one thread per
    worker process when it answers again, each job's in order. Kept for EVENT_TTL_S at most
    (readers could not replay them any later) and lost if the process stops first."""

    def __init__(self, events: EventLog, keep_s: float) -> None:
        self.events, self.keep_s = events, keep_s
        self.waiting: deque[tuple[float, list[Event], list[str]]] = deque()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, events: list[Event], delete: list[str], since: float | None) -> None:
        if not events and not delete:
            return
        with self.lock:
            self.waiting.append((since or time.monotonic(), list(events), list(delete)))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="event-backlog", daemon=True)
                self.thread.start()
        self.wake.set()

    def __len__(self) -> int:
        with self.lock:
            return len(self.waiting)

    def _run(self) -> None:
        while True:
            self.wake.wait(RETRY_S)
            self.wake.clear()
            while self._publish_oldest():
                pass

    def _publish_oldest(self) -> bool:
        with self.lock:
            if not self.waiting:
                return False
            since, events, delete = self.waiting[0]
        if time.monotonic() - since > self.keep_s:
            log.warning("dropping %d held event(s): Redis was away too long", len(events))
        else:
            try:
                self.events.publish_many(events, delete=delete, once=True)
            except RedisError:
                return False  # still away; the next round tries again
            log.info("Redis is back; published %d held event(s) of an ended job", len(events))
        with self.lock:
            self.waiting.popleft()
        return True
