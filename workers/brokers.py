"""What differs between the two brokers Celery may use: Redis (the default, REDIS_URL) or
RabbitMQ (`CELERY_BROKER_URL=amqp://...`). Only the task queues move; Redis keeps the
events, pub/sub, cancel flags, caches and rate limits either way (docs/deploy.md).

Redis: kombu's Redis transport with our publishing client (workers/broker.py), ten
priority steps per queue where step 0 is served first, and a visibility timeout longer than
any generation, after which an unacknowledged message is delivered again (every message but
an inference job's, which the sweeps recover: workers/broker.py).

RabbitMQ: every queue is a durable classic queue with `x-max-priority` 9, where 9 is served
first, and every declaration carries those arguments, whoever declares (the web when it
publishes, a worker when it consumes or adds a model queue, beat, Flower): Celery's
`task_queue_max_priority` adds them to every queue it knows, and a declaration with other
arguments would be refused with PRECONDITION_FAILED. Publishes wait for the broker's
confirm, so a publish that returns was taken. Not quorum queues, not even for `default` and
`node.<name>`, which need no priorities: a worker consumes all its queues on one channel
with one prefetch limit for the channel (RabbitMQ's "global" QoS, which Celery uses there),
and quorum queues refuse global QoS; per-consumer prefetch instead would let a worker hold a
job per queue while its slots are full, which late binding forbids (docs/pipeline.md).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from config.settings import Settings

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
# Our API's priorities are 0-9, 9 most urgent.
MAX_PRIORITY = 9
# Kombu's Redis transport serves step 0 first.
PRIORITY_STEPS = list(range(MAX_PRIORITY + 1))
# The publish's wait for RabbitMQ's confirm, in seconds: a broker that takes a message but
# never confirms it must not hold the caller (the outbox sweeper publishes the job again).
CONFIRM_TIMEOUT_S = 5.0


def is_amqp(url: str) -> bool:
    return urlsplit(url).scheme in AMQP_SCHEMES


def broker_priority(api_priority: int, *, amqp: bool) -> int:
    """The message priority for an API priority (9 most urgent) on this broker."""
    return api_priority if amqp else MAX_PRIORITY - api_priority


def redelivery_timeout_s(settings: Settings) -> float:
    """How long a delivered job may stay unacknowledged before the broker may hand it to
    another worker: longer than the longest generation allowed (celery#5935). Redis's
    visibility timeout; RabbitMQ's `consumer_timeout` must be at least this (the server's
    setting, docs/deploy.md)."""
    return settings.max_generation_s + 2 * settings.lease_ttl_s + 60


def celery_options(settings: Settings) -> dict[str, Any]:
    """The Celery settings that depend on the broker."""
    if is_amqp(settings.broker_url):
        return {
            "broker_transport_options": {"confirm_publish": True},
            "task_queue_max_priority": MAX_PRIORITY,
            # Sweeps, maintenance and model pulls carry no priority of their own: the lowest.
            "task_default_priority": 0,
            # A channel error (RabbitMQ closes the channel of a delivery held past its
            # consumer_timeout) restarts the consumer, as a lost connection does, instead of
            # stopping the worker with its jobs: the jobs run on, and the broker's
            # redelivery of theirs finds them claimed (workers/tasks/inference.py).
            "broker_channel_error_retry": True,
        }
    return {
        # One Redis client per channel for publishing, instead of one per message. Only
        # for redis:// (rediss:// and Sentinel keep kombu's own transports).
        "broker_transport": (
            "workers.broker:Transport" if settings.broker_url.startswith("redis://") else None
        ),
        "broker_transport_options": {
            "visibility_timeout": redelivery_timeout_s(settings),
            "priority_steps": PRIORITY_STEPS,
            # Keep kombu's default separator between a queue's name and its priority step:
            # ":" would clash with model tags ("model.llama3.2:latest"). Queues are served
            # round robin (the default), so one busy model cannot starve another.
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            # A publish to a broker that is away fails at once and the job waits in the
            # outbox. Without this kombu's Connection.default_channel retries the connection
            # for about 6 s (broker_connection_timeout, 4 s, plus its back-off): a caller's
            # submit, and every job of an outbox sweep, waited that long. The worker's own
            # consumer reconnects with Celery's broker_connection_* settings, not these.
            "max_retries": 0,
        },
    }
