"""One watcher per worker process for every job it runs: cancel requests and leases.

Each running job needs two things watched: a cancel request (a Redis key the web sets, and
the row's `cancel_requested_at` as the durable record) and its lease, renewed before it
expires so the sweeper leaves the job alone. A thread and a poll per job cost a Redis
round trip per job every POLL_S; one thread per process asks about all of them at once:
one MGET per poll, one UPDATE per renewal round, however many jobs run.

A job counts as lost when its lease could not be renewed for longer than it lasts (minus a
margin): by then the sweeper may have given it to another worker, so this one must stop
writing, even while it can still reach Redis and the engine.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from db.inference import renew_leases
from db.session import Database

log = logging.getLogger(__name__)

POLL_S = 0.2  # a cancel reaches the engine stream within this (plus one chunk)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def cancel_key(request_id: uuid.UUID | str) -> str:
    return f"omx:req:{request_id}:cancel"


@dataclass
class JobWatch:
    """What the watcher tells one job's runner, read between engine chunks."""

    request_id: uuid.UUID
    attempt: int
    renewed_at: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)


class Watcher:
    def __init__(self, redis: Redis, database: Database, worker_name: str, lease_ttl_s: float):
        self.redis, self.database, self.worker_name = redis, database, worker_name
        self.ttl_s = float(lease_ttl_s)
        self.jobs: dict[uuid.UUID, JobWatch] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.stopped = threading.Event()
        self.redis_down = False  # said once per outage, not every poll

    def watch(self, request_id: uuid.UUID, attempt: int) -> JobWatch:
        """Start watching a job just claimed (its lease is fresh)."""
        watch = JobWatch(request_id, attempt)
        with self.lock:
            self.jobs[request_id] = watch
            if self.thread is None or not self.thread.is_alive():
                # Started on first use, inside the worker process Celery runs.
                self.thread = threading.Thread(target=self._run, name="job-watcher", daemon=True)
                self.thread.start()
        return watch

    def forget(self, request_id: uuid.UUID) -> None:
        with self.lock:
            self.jobs.pop(request_id, None)

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(POLL_S):
            with self.lock:
                watched = list(self.jobs.values())
            if watched:
                self._poll_cancels(watched)
                self._keep_leases(watched)

    def _poll_cancels(self, watched: list[JobWatch]) -> None:
        try:
            self._check_cancels(watched)
        except RedisError as error:
            # The row's cancel flag still arrives with each lease renewal.
            if not self.redis_down:
                log.warning("cannot read cancel flags while Redis is away: %s", error)
            self.redis_down = True
        except Exception:  # keep watching: one failed poll must not end the jobs
            log.exception("checking %d job(s) for cancels failed once", len(watched))

    def _keep_leases(self, watched: list[JobWatch]) -> None:
        now = time.monotonic()
        for watch in watched:
            if now - watch.renewed_at > self.ttl_s * 5 / 6:
                watch.lost.set()
        # One renewal round for all, as soon as the oldest lease is a third spent.
        if min(watch.renewed_at for watch in watched) > now - self.ttl_s / 3:
            return
        try:
            self._renew([w for w in watched if not w.lost.is_set()], now)
        except (OperationalError, InterfaceError) as error:  # an outage: no traceback
            log.warning("renewing %d lease(s) failed: %s", len(watched), _first_line(error))
        except Exception:
            log.exception("renewing %d lease(s) failed once", len(watched))

    def _check_cancels(self, watched: list[JobWatch]) -> None:
        flags = self.redis.mget([cancel_key(watch.request_id) for watch in watched])
        self.redis_down = False
        for watch, flag in zip(watched, flags, strict=True):
            if flag is not None:
                watch.cancelled.set()

    def _renew(self, watched: list[JobWatch], now: float) -> None:
        if not watched:
            return
        with self.database.unit_of_work() as session:
            ours = renew_leases(
                session=session,
                worker_name=self.worker_name,
                jobs=[(watch.request_id, watch.attempt) for watch in watched],
                lease=timedelta(seconds=self.ttl_s),
            )
        for watch in watched:
            if watch.request_id not in ours:
                watch.lost.set()  # swept or ended meanwhile
                continue
            watch.renewed_at = now
            if ours[watch.request_id]:
                watch.cancelled.set()
