"""The broker-dependent Celery settings (workers/brokers.py), read from the app every side
builds: what RabbitMQ is told must be the same whoever declares a queue."""

from __future__ import annotations

import pytest

from config.settings import build_settings
from workers.brokers import broker_priority, is_amqp, redelivery_timeout_s
from workers.celery_app import create_celery_app
from workers.dispatch import queue_for_model, queue_for_node

AMQP = "amqp://omx:secret-pw@rabbit:5672/ollamamax"


@pytest.mark.parametrize(
    ("url", "amqp"),
    [
        (AMQP, True),
        ("amqps://omx:pw@rabbit:5671/ollamamax", True),
        ("pyamqp://rabbit//", True),
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://redis:6380/0", False),
        ("sentinel://s1:26379", False),
    ],
)
def test_the_broker_kind_comes_from_the_url_scheme(url: str, amqp: bool) -> None:
    assert is_amqp(url) is amqp


def test_priority_9_is_served_first_on_either_broker() -> None:
    # RabbitMQ delivers the highest message priority first; kombu's Redis steps the lowest.
    assert [broker_priority(p, amqp=True) for p in (0, 5, 9)] == [0, 5, 9]
    assert [broker_priority(p, amqp=False) for p in (0, 5, 9)] == [9, 4, 0]


def test_every_queue_is_declared_alike_on_rabbitmq() -> None:
    """A declaration with other arguments than the queue's is a PRECONDITION_FAILED channel
    error: the web (publishing), a worker (consuming, adding a model queue) and beat all
    build their queues from the same app settings."""
    app = create_celery_app(build_settings({"celery_broker_url": AMQP}))
    queues = app.amqp.queues
    for name in ("default", queue_for_model("llama3.2:latest"), queue_for_node("gpu0@h")):
        queue = queues[name]  # a publish to a queue it does not know yet creates it so
        assert queue.queue_arguments == {"x-max-priority": 9}, name
        assert queue.durable, name
        assert not queue.auto_delete, name
    added = queues.select_add("model.newcomer:7b", exchange="model.newcomer:7b")  # add_consumer
    assert added.queue_arguments == {"x-max-priority": 9}
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.broker_channel_error_retry is True
    assert app.conf.task_acks_late
    assert app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1


def test_redis_keeps_its_transport_priority_steps_and_visibility_timeout() -> None:
    settings = build_settings({"redis_url": "redis://127.0.0.1:6379/0"})
    app = create_celery_app(settings)
    assert app.conf.broker_transport == "workers.broker:Transport"
    options = app.conf.broker_transport_options
    assert options["priority_steps"] == list(range(10))
    assert options["visibility_timeout"] == redelivery_timeout_s(settings)
    assert redelivery_timeout_s(settings) > settings.max_generation_s
    assert app.conf.task_queue_max_priority is None
    assert app.amqp.queues["default"].queue_arguments is None
