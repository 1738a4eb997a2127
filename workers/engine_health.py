"""Whether this worker's engine answers, as its jobs and its heartbeat find out.

A job that cannot reach the engine reports it down and is handed back to the queue instead
of burning its retries; the heartbeat wakes at once, stops consuming the model queues (as a
drained node does), marks the node degraded and probes every ENGINE_PROBE_S. The first
answer (a probe, or a job's first chunk) reports it up, and the model queues are consumed
again. An engine down for longer than ENGINE_DOWN_GRACE_S is not waited for any more: the
worker consumes again and its jobs end with the engine's failure, bounded as before.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class EngineHealth:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.down_since: float | None = None
        self.changed = threading.Event()  # wakes the heartbeat
        self._lock = threading.Lock()

    def report_down(self, why: str) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        log.warning("the engine does not answer (%s): taking no new jobs until it does", why)
        self.changed.set()

    def report_up(self) -> None:
        if self.down_since is None:  # the hot path's check: no lock
            return
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            log.info("the engine answers again after %.1f s", time.monotonic() - since)
            self.changed.set()

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def waiting(self) -> bool:
        """Down, and not for so long that jobs should stop waiting for it."""
        since = self.down_since
        return since is not None and time.monotonic() - since < self.grace_s
