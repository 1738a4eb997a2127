"""Where every process reads the run-time config (`RuntimeConfig`, config/runtime.py):
stored overrides on top of the environment's defaults, read through Redis (workers/cache.py)
and reused for LIVE_CONFIG_TTL_S, so a change reaches every web and worker process within
seconds and costs them almost nothing meanwhile. One name for one thing: the value is a
`RuntimeConfig`, its source a `RuntimeConfigSource`, held as `runtime_config` (the worker's
`Runtime`, the web app's extensions) and read in a request with `current_runtime_config()`."""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from sqlalchemy.exc import SQLAlchemyError

from config.runtime import RuntimeConfig
from config.settings import Settings
from db.session import Database
from db.system_config import stored_values
from workers.cache import VersionedCache

log = logging.getLogger(__name__)


class RuntimeConfigSource:
    def __init__(self, settings: Settings, database: Database, redis: Redis) -> None:
        self.settings = settings
        self.database = database
        self.cache = VersionedCache(redis, "system_config", ttl_s=60)
        self._lock = threading.Lock()
        self._value = RuntimeConfig.defaults(settings)
        self._read_at = float("-inf")

    def current(self) -> RuntimeConfig:
        """For hot paths: at most LIVE_CONFIG_TTL_S old."""
        if time.monotonic() - self._read_at < self.settings.live_config_ttl_s:
            return self._value
        with self._lock:
            if time.monotonic() - self._read_at >= self.settings.live_config_ttl_s:
                self._value = self.fresh()
                self._read_at = time.monotonic()
        return self._value

    def fresh(self) -> RuntimeConfig:
        """What is stored now (through the cache, which a write invalidates)."""
        try:
            stored = self.cache.get_or_load("values", self._load)
        except SQLAlchemyError as error:
            log.warning("run-time config unavailable, keeping the last one: %s", error)
            return self._value
        return RuntimeConfig.merged(self.settings, stored)

    def changed(self) -> None:
        """After a committed write: every process sees it at its next read."""
        self.cache.invalidate()
        self._read_at = float("-inf")

    def _load(self) -> dict[str, object]:
        with self.database.unit_of_work() as session:
            return stored_values(session=session)
