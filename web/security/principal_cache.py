"""Who a credential belongs to, remembered in-process for PRINCIPAL_CACHE_S seconds.

Resolving a caller costs a database round trip (API key and account rows) and, for a JWT, a
Redis one (is its login revoked?) on every request; a caller sending a job a second pays it
over and over for the same answer. Each web process keeps the answer for a few seconds.

Revocation stays effective:
- in the process that changes a credential or an account, at once (`forget` evicts it);
- in every other process within milliseconds: `forget` also publishes the eviction on a
  Redis channel each process listens to;
- and at worst within PRINCIPAL_CACHE_S, should that message be lost: while a process is not
  listening (Redis away, the listener starting), it does not serve from its cache at all.
Expiry times are checked on every use, so an expiring key stops working on the second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL = "omx:principals:forget"
RETRY_S = 1.0
PING_AFTER_S = 30.0


class PrincipalCache:
    def __init__(self, redis: Redis, ttl_s: float) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.entries: dict[str, tuple[float, frozenset[str], Any]] = {}
        self.lock = threading.Lock()
        self.listening = threading.Event()
        self.listener: threading.Thread | None = None
        self.stopped = False

    def get(self, key: str) -> Any | None:
        if self.ttl_s <= 0:
            return None
        self._listen()
        if not self.listening.is_set():
            return None  # an eviction could be missed: ask the source
        entry = self.entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[2]

    def put(self, key: str, value: Any, *, tags: Iterable[str]) -> None:
        """Remember `value`; `tags` name what evicts it (user:<id>, key:<id>, family:<id>)."""
        if self.ttl_s > 0 and self.listening.is_set():
            with self.lock:
                self.entries[key] = (time.monotonic() + self.ttl_s, frozenset(tags), value)

    def forget(
        self,
        *,
        user_ids: Iterable[uuid.UUID] = (),
        api_key_ids: Iterable[uuid.UUID] = (),
        family_ids: Iterable[uuid.UUID] = (),
    ) -> None:
        """Evict every entry of these accounts, keys and logins, here and in every process."""
        tags = (
            [f"user:{i}" for i in user_ids]
            + [f"key:{i}" for i in api_key_ids]
            + [f"family:{i}" for i in family_ids]
        )
        if not tags:
            return
        self._evict(tags)
        try:
            self.redis.publish(CHANNEL, json.dumps(tags))
        except RedisError as error:  # the others' entries expire within ttl_s
            log.warning("could not tell other processes to forget %s: %s", tags, error)

    def _evict(self, tags: Iterable[str]) -> None:
        wanted = set(tags)
        with self.lock:
            for key in [k for k, (_, own, _) in self.entries.items() if own & wanted]:
                del self.entries[key]

    def _listen(self) -> None:
        if self.stopped:
            return
        if self.listener is None or not self.listener.is_alive():
            with self.lock:
                if self.listener is None or not self.listener.is_alive():
                    # Started on first use, after gunicorn forked (each process listens).
                    self.listener = threading.Thread(
                        target=self._run, name="principal-cache", daemon=True
                    )
                    self.listener.start()

    def stop(self) -> None:
        """Stop listening (and so serving from the cache); for shutdown and tests."""
        self.stopped = True

    def _run(self) -> None:
        while not self.stopped:
            try:
                self._subscribe_and_evict()
            except Exception as error:  # whatever broke it, listen again
                if not self.stopped:
                    log.warning("principal cache not listening (%s); serving without it", error)
            finally:
                self.listening.clear()
                with self.lock:
                    self.entries.clear()  # evictions may have been missed meanwhile
            time.sleep(RETRY_S)

    def _subscribe_and_evict(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANNEL)
            pubsub.get_message(timeout=5)  # the subscription's confirmation
            self.listening.set()
            quiet_since = time.monotonic()
            while not self.stopped:
                message = pubsub.get_message(timeout=1)
                if message is None:
                    if time.monotonic() - quiet_since > PING_AFTER_S:
                        pubsub.ping()  # a dead connection shows up here, not in silence
                        quiet_since = time.monotonic()
                elif message["type"] == "message":
                    self._evict(json.loads(message["data"]))
        finally:
            pubsub.close()
