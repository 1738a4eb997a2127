"""A read-through cache in Redis that a write can never leave stale.

Each namespace has a version number. A reader reads the version with the cached entry (one
round trip) and uses the entry only if it was stored under the current version; otherwise it
loads from PostgreSQL and stores the result under the version it read *before* loading. A
writer bumps the version after its commit. So a reader that loaded old rows just before a
write stores them under an old version, and nobody uses them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PREFIX = "omx:cache:"


class VersionedCache:
    def __init__(self, redis: Redis, namespace: str, ttl_s: int = 300) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl_s = ttl_s
        self._version_key = f"{PREFIX}{namespace}:version"

    def get_or_load(self, key: str, load: Callable[[], Any]) -> Any:
        """The cached value of `key`, or `load()` (stored for the next reader). `load` must
        return something JSON can hold. Redis being down means reading PostgreSQL directly."""
        entry_key = f"{PREFIX}{self.namespace}:{key}"
        try:
            version, raw = self.redis.mget([self._version_key, entry_key])  # type: ignore[misc]
        except RedisError as error:
            log.warning("cache %s unavailable: %s", self.namespace, error)
            return load()
        current = int(version or 0)
        if raw is not None:
            entry = json.loads(raw)
            if entry["v"] == current:
                return entry["data"]
        value = load()
        try:
            body = json.dumps({"v": current, "data": value}, separators=(",", ":"), default=str)
            self.redis.set(entry_key, body, ex=self.ttl_s)
        except RedisError as error:
            log.warning("cache %s not stored: %s", self.namespace, error)
        return value

    def invalidate(self) -> None:
        """Call after the write's commit. If Redis is down the entries expire with their TTL,
        which is why it is short."""
        try:
            self.redis.incr(self._version_key)
        except RedisError as error:
            log.warning("cache %s not invalidated: %s", self.namespace, error)
