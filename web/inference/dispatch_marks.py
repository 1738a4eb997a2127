"""Marking requests as handed to the broker, in batches off the request path.

The mark only tells the outbox sweeper which queued rows it need not re-publish, and the
sweeper waits UNDISPATCHED_GRACE_S before acting, so a mark that lands a few milliseconds
late changes nothing, and one lost with the process costs at most a duplicate publish
(which the worker's claim turns into a no-op). Batching saves a transaction per submission.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from db.inference import mark_dispatched
from db.session import Database

log = logging.getLogger(__name__)


class DispatchMarks:
    def __init__(self, database: Callable[[], Database], batch_ms: int) -> None:
        self.database = database  # looked up at each write: tests swap the app's database
        self.interval_s = batch_ms / 1000
        self.pending: list[uuid.UUID] = []
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, request_id: uuid.UUID) -> None:
        if self.interval_s <= 0:
            self._write([request_id])
            return
        with self.lock:
            self.pending.append(request_id)
            if self.thread is None or not self.thread.is_alive():
                # Started on first use, after gunicorn forked and gevent patched threading.
                self.thread = threading.Thread(target=self._run, name="dispatch-marks", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval_s):
            with self.lock:
                batch, self.pending = self.pending, []
            if batch:
                self._write(batch)

    def _write(self, batch: list[uuid.UUID]) -> None:
        try:
            with self.database().unit_of_work() as session:
                mark_dispatched(session=session, request_ids=batch)
        except Exception:  # the sweeper re-publishes unmarked rows; nothing is lost
            log.exception("could not mark %d request(s) dispatched", len(batch))
