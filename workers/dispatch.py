"""Hand requests to the broker. A publish that fails leaves the request undispatched; the
outbox sweeper tries again, and the worker's claim makes a duplicate harmless."""

from __future__ import annotations

import logging
import uuid

from kombu.exceptions import OperationalError

from workers.celery_app import broker_priority, queue_for_model
from workers.tasks.inference import run

log = logging.getLogger(__name__)


def dispatch(request_id: uuid.UUID, model_name: str, priority: int) -> bool:
    try:
        run.apply_async(
            args=[str(request_id)],
            task_id=str(request_id),
            queue=queue_for_model(model_name),
            priority=broker_priority(priority),
            retry=False,  # never hold the caller while the broker is away
        )
    except (OperationalError, ConnectionError, OSError) as error:
        log.warning("could not publish request %s: %s", request_id, error)
        return False
    return True
