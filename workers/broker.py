"""Kombu's Redis transport, publishing through one Redis client per channel.

Kombu's Redis channel builds a new `redis.Redis` client for every message it publishes
(`conn_or_acquire` without a client): the connection comes from the channel's pool, but the
client itself (its table of some 170 response callbacks) is made and thrown away each time,
about half a millisecond of CPU per job in the web process. This channel makes it once.
A client over a connection pool is safe to share between threads.

The same client also keeps a worker alive when Redis goes away under it. Celery's consumer
answers a lost connection with `Connection.collect()` and then `close()`. When a channel's
first close was cut short (its BRPOP in flight, the pidbox's queue delete), `collect()` has
already cut the transport from its connection (`transport.client = None`) by the time
`close()` closes the channel for good. That close drops the channel's pool and then restores
the unacknowledged messages. Kombu's `conn_or_acquire` builds a new pool for the restore
from `self.connection.client.hostname`, and so raises `AttributeError: 'NoneType' object has
no attribute 'hostname'`. Celery does not take that for a connection error: "Unrecoverable
error", and the worker stops. The same read on a closed transport was kombu#582 (patched
for the queue delete only) and kombu#970. It is still there in kombu 5.7.0, the newest
release. Here the restore goes through the channel's one client instead, made when the
channel took its first message (kombu records each delivery through `conn_or_acquire`), so
it never builds a pool again: a restore that cannot reach Redis raises a connection error,
which Celery handles, and the message waits in the unacknowledged set for kombu's
visibility timeout (the lease sweeper has the job anyway). tests/faults/test_broker_loss.py
replays the sequence with kombu's transport and with this one.

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
