"""What a worker process holds for its tasks: the database, Redis, the event log, its
engine and its node. Built once by `python -m workers run` before Celery starts."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from celery import Celery
from redis import Redis

from config.settings import Settings
from db.session import Database
from workers.engine_health import EngineHealth
from workers.engines.base import Engine
from workers.events import EventLog
from workers.job_events import Backlog
from workers.routing import Router
from workers.runtime_config import RuntimeConfigSource
from workers.watch import Watcher


@dataclass
class Runtime:
    settings: Settings
    database: Database
    celery: Celery  # the app this worker consumes with and publishes through
    redis: Redis
    events: EventLog
    runtime_config: RuntimeConfigSource  # the run-time config, read through its cache
    engine: Engine
    worker_name: str
    node_name: str
    engine_url: str
    gpu_index: int | None
    slots: int = 1  # the worker's threads: the most jobs it can run at once
    node_id: uuid.UUID | None = None
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Held from reading the engine's models to recording them (workers/node.py), so a
    # heartbeat's older read never lands after a pull's or a removal's newer one.
    inventory_lock: threading.Lock = field(default_factory=threading.Lock)
    # Set when the worker is asked to stop: running jobs then get `shutdown_grace_s` to
    # finish before they are handed back to the queue.
    stopping_since: float | None = None
    # Cancel requests and leases of every job this process runs (workers/watch.py).
    watcher: Watcher = field(init=False)
    # Whether the engine answers; the heartbeat stops consuming while it does not.
    engine_health: EngineHealth = field(init=False)
    # Events of jobs that ended while Redis was away, published when it returns.
    backlog: Backlog = field(init=False)
    # Warm-model-first routing: what this engine and the fleet have loaded, in memory.
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        self.watcher = Watcher(
            self.redis, self.database, self.worker_name, self.settings.lease_ttl_s
        )
        self.engine_health = EngineHealth(self.settings.engine_down_grace_s)
        self.backlog = Backlog(self.events, keep_s=self.settings.event_ttl_s)
        self.router = Router(
            self.node_name,
            self.settings.warm_routing_wait_s,
            self.settings.warm_routing_retry_s,
        )

    def begin_stopping(self) -> None:
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()

    def hand_back_due(self) -> bool:
        since = self.stopping_since
        return since is not None and time.monotonic() - since >= self.settings.shutdown_grace_s

    def job_started(self) -> None:
        with self.lock:
            self.busy += 1

    def job_ended(self) -> None:
        with self.lock:
            self.busy -= 1


_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def current() -> Runtime:
    if _runtime is None:
        raise RuntimeError("no worker runtime: start workers with `python -m workers run`")
    return _runtime
