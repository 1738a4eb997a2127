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
release. Here the restore goes through the channel's one client instead, made as soon as
the channel first talks to Redis (a consumer's queue declaration does), so it never builds
a pool again: a restore that cannot reach Redis raises a connection error, which Celery
handles; a recorded message waits in the unacknowledged set for kombu's visibility
timeout, an inference job (below) for the sweeps. tests/faults/test_broker_loss.py replays
the sequence with kombu's transport and with this one.

The channel also keeps kombu's acknowledgement emulation off the inference jobs. With
`acks_late`, kombu records every message it delivers in Redis (a hash and a sorted set, one
MULTI/EXEC) and removes the record on the ack (another), so that a message whose worker was
killed is delivered again after the visibility timeout. An inference job needs no such
record: its lease recovers it once it runs, and the outbox sweep before that
(`LOST_DISPATCH_S` after its last publish, docs/pipeline.md); the two round trips were a
tenth of the worker's CPU per job (docs/benchmarks.md). Every other message (a model pull
or delete on `node.<name>`, which no sweep covers; beat's sweeps) keeps its record, and the
emulation's scan of old records goes on. Without a record, a held job still goes back to
its queue when the channel closes (a stopping worker; after a lost connection, if Redis
answers by then), from a copy of the worker's message, where a recorded one would go; a
restore stops at its first connection error, as the emulation's does, and leaves the rest
to the sweeps (tests/workers/test_broker_records.py).

Used for `redis://` brokers only (workers/celery_app.py); `rediss://`, Sentinel and AMQP
brokers keep kombu's own transports.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.objects import cached_property

from workers.dispatch import INFERENCE

# Tasks whose messages kombu does not record on delivery: something else recovers them.
SWEPT_TASKS = frozenset({INFERENCE})


def _is_swept(message: Any) -> bool:
    return message.headers.get("task") in SWEPT_TASKS


class QoS(redis.QoS):  # type: ignore[misc]
    """Kombu's Redis acknowledgement emulation for every message but the swept tasks'.

    `_unrecorded` holds the delivery tags of the messages delivered without a record. The
    consumer's thread adds to it; the job threads that acknowledge remove from it (a set's
    add and discard are atomic in CPython, as kombu's own `_dirty` set relies on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unrecorded: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if _is_swept(message):
            self._unrecorded.add(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if delivery_tag in self._unrecorded:
            virtual.QoS.ack(self, delivery_tag)
            self._unrecorded.discard(delivery_tag)
        else:
            super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if delivery_tag in self._unrecorded:
            # A requeue goes through Channel._restore, from the worker's copy.
            virtual.QoS.reject(self, delivery_tag, requeue=requeue)
            self._unrecorded.discard(delivery_tag)
        else:
            super().reject(delivery_tag, requeue=requeue)

    def restore_unacked(self, client: Any = None) -> None:
        """At the channel's close: every message delivered and not acknowledged goes back to
        its queue, a recorded one from its record, the others from the worker's copy. The
        first connection error ends it (and reaches Celery, which reconnects): the recorded
        messages left wait for the visibility timeout, the others for the sweeps."""
        self._flush()  # acknowledged since the last delivery: not to be restored
        with self.channel.conn_or_acquire(client) as client:
            for tag, message in list(self._delivered.items()):
                if tag in self._unrecorded:
                    self.channel._restore(message)
                else:
                    self.restore_by_tag(tag, client=client)
        self._delivered.clear()
        self._unrecorded.clear()


class Channel(redis.Channel):  # type: ignore[misc]
    QoS = QoS

    @cached_property
    def _publisher(self) -> Any:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._publisher

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        if message.delivery_tag not in getattr(self.qos, "_unrecorded", ()):
            # Recorded, or acknowledged meanwhile: kombu restores from the record, if any.
            super()._restore(message, leftmost)
            return
        # What kombu's restore of a recorded message does with the record, with a copy of
        # the worker's (it marks the message redelivered; the running job holds this one).
        delivery = message.delivery_info
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            self._do_restore_message(
                copy.deepcopy(message._raw),
                delivery["exchange"],
                delivery["routing_key"],
                pipe,
                leftmost,
            )
            # A job that ended while the channel closed is not put back. (One that ends
            # between this and the push still is: its claim refuses the duplicate.)
            if message.delivery_tag not in self.qos._dirty:
                pipe.execute()


class Transport(redis.Transport):  # type: ignore[misc]
    Channel = Channel
