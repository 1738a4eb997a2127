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

from celery import Celery
from kombu.exceptions import OperationalError

from db.recovery import Dispatchable, mark_dispatched
from db.session import Database

log = logging.getLogger(__name__)

INFERENCE = "inference.run"
MODEL_PULL = "models.pull"
MODEL_DELETE = "models.delete"

# Kombu's Redis transport serves priority 0 first; our API says 9 is most urgent.
PRIORITY_STEPS = list(range(10))


def queue_for_model(model_name: str) -> str:
    return f"model.{model_name}"


def queue_for_node(node_name: str) -> str:
    return f"node.{node_name}"


def broker_priority(api_priority: int) -> int:
    return 9 - api_priority


def _publish(celery: Celery, task: str, args: list[Any], **options: Any) -> bool:
    try:
        # retry=False: never hold the caller while the broker is away. ignore_result: nobody
        # waits for one, so no result channel is subscribed for it (see workers/celery_app.py).
        celery.send_task(task, args=args, retry=False, ignore_result=True, **options)
    except (OperationalError, ConnectionError, OSError) as error:
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
        priority=broker_priority(priority),
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
