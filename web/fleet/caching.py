"""Hot fleet reads (model and node lists) through the versioned Redis cache; every write
invalidates after its commit, so a read after a write is never stale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app

from web.database import after_commit
from workers.cache import VersionedCache

MODELS, NODES = "models", "nodes"
TTL_S = 30


def cache(namespace: str) -> VersionedCache:
    return VersionedCache(current_app.extensions["redis"], namespace, ttl_s=TTL_S)


def cached(namespace: str, key: str, load: Callable[[], Any]) -> Any:
    return cache(namespace).get_or_load(key, load)


def invalidate_after_commit(*namespaces: str) -> None:
    caches = [cache(namespace) for namespace in namespaces]

    def invalidate() -> None:
        for each in caches:
            each.invalidate()

    after_commit(invalidate)
