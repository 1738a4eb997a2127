"""Handing work to the broker: every task kind, by name, in one place.

The web (new jobs, model pulls), the sweepers (jobs to publish again) and a stopping worker
(jobs it hands back) all publish here. Tasks are named, not imported, so nothing that
publishes imports the task modules (and no task module imports back).

A publish that fails leaves a job undispatched; the outbox sweeper tries again, and the
worker's claim makes a duplicate harmless.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Celery
from kombu.exceptions import OperationalError

from db.recovery import Dispatchable, mark_dispatched
from db.session import Database
from workers.brokers import CONFIRM_TIMEOUT_S, broker_priority, is_amqp

log = logging.getLogger(__name__)

INFERENCE = "inference.run"
MODEL_PULL = "models.pull"
MODEL_DELETE = "models.delete"


def queue_for_model(model_name: str) -> str:
    return f"model.{model_name}"


def queue_for_node(node_name: str) -> str:
    return f"node.{node_name}"


# RabbitMQ: one immediate reconnect. A pooled connection dies with a broker restart (or a
# firewall's idle cut), and kombu's AMQP connection does not reconnect by itself as redis-py
# does; without this the next job would wait for the outbox sweeper. A broker that is away
# refuses the new connection as fast as the old one failed.
AMQP_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}


def _publish(celery: Celery, task: str, args: list[Any], **options: Any) -> bool:
    if is_amqp(celery.conf.broker_url):
        retry = {"retry": True, "retry_policy": AMQP_RETRY, "confirm_timeout": CONFIRM_TIMEOUT_S}
    else:
        retry = {"retry": False}  # never hold the caller while the broker is away
    try:
        # ignore_result: nobody waits for one, so no result channel is subscribed for it
        # (see workers/celery_app.py).
        celery.send_task(task, args=args, ignore_result=True, **retry, **options)
    except (OperationalError, ConnectionError, OSError, MessageNacked) as error:
        log.warning("could not publish %s%s: %s", task, args, error)
        return False
    return True


def publish_inference(
    celery: Celery, request_id: uuid.UUID, model_name: str, priority: int
) -> bool:
    """Queue a job for whichever worker serves its model; the task id is the request id."""
    return _publish(
        celery,
        INFERENCE,
        [str(request_id)],
        task_id=str(request_id),
        queue=queue_for_model(model_name),
        priority=broker_priority(priority, amqp=is_amqp(celery.conf.broker_url)),
    )


def hand_to_node(
    celery: Celery,
    request_id: str,
    node_name: str,
    routed: dict[str, Any],
    broker_priority: int | None,
) -> bool:
    """A job for the node whose engine has its model loaded (workers/routing.py): it goes to
    that node's own queue, which only that worker consumes, and runs there without being
    routed again. `broker_priority` is the message's own, already in the broker's terms."""
    options: dict[str, Any] = {} if broker_priority is None else {"priority": broker_priority}
    return _publish(
        celery,
        INFERENCE,
        [request_id],
        kwargs={"routed": routed},
        task_id=request_id,
        queue=queue_for_node(node_name),
        **options,
    )


def publish_to_node(celery: Celery, task: str, args: list[Any], node_name: str) -> bool:
    """Work for one node's worker (pull or delete a model on its engine)."""
    return _publish(celery, task, args, queue=queue_for_node(node_name))


def republish(celery: Celery, database: Database, jobs: Dispatchable) -> list[uuid.UUID]:
    """Publish queued jobs again and mark those that went out, in one transaction: the
    outbox sweeper then leaves them alone until the lost-message clock runs out."""
    published = [
        job_id
        for job_id, model, priority in jobs
        if publish_inference(celery, job_id, model, priority)
    ]
    if published:
        with database.unit_of_work() as session:
            mark_dispatched(session=session, request_ids=published)
    return published
