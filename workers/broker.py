"""Kombu's Redis transport, publishing through one Redis client per channel.

Kombu's Redis channel builds a new `redis.Redis` client for every message it publishes
(`conn_or_acquire` without a client): the connection comes from the channel's pool, but the
client itself (its table of some 170 response callbacks) is made and thrown away each time,
about half a millisecond of CPU per job in the web process. This channel makes it once.
A client over a connection pool is safe to share between threads.

Used for `redis://` brokers only (workers/celery_app.py); `rediss://`, Sentinel and AMQP
brokers keep kombu's own transports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis
from kombu.utils.objects import cached_property


class Channel(redis.Channel):  # type: ignore[misc]
    @cached_property
    def _publisher(self) -> Any:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._publisher


class Transport(redis.Transport):  # type: ignore[misc]
    Channel = Channel
