"""Distribution: pull a model onto this node's engine, or remove it, on operators' request.

Sent to `node.<name>`, so the node's own worker runs them. A pull streams the engine's
progress as model_update events (throttled) and onto the replica row; the node's model list
is synced at the end, which makes the replica available and the model servable.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task

from db.catalog import disallowed_registry, mark_replica, model_id_by_name
from db.models import ReplicaStatus
from workers import runtime
from workers.engines.base import EngineError
from workers.events import announce
from workers.node import sync_models
from workers.runtime import Runtime

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.25  # at most this often per pull, besides each new step and layer done


def _ours(rt: Runtime, node_id: str) -> bool:
    if str(rt.node_id) == node_id:
        return True
    log.warning("task for node %s reached node %s; ignored", node_id, rt.node_id)
    return False


def _news(rt: Runtime, event: str, model: str, **fields: Any) -> None:
    announce(
        rt.redis,
        "model_update",
        event,
        model=model,
        node=rt.node_name,
        node_id=rt.node_id,
        **fields,
    )


def _record(rt: Runtime, model: str, status: ReplicaStatus, **progress: int | None) -> None:
    with rt.database.unit_of_work() as session:
        model_id = model_id_by_name(session=session, name=model)
        if model_id is not None and rt.node_id is not None:
            mark_replica(
                session=session, model_id=model_id, node_id=rt.node_id, status=status, **progress
            )


@shared_task(name="models.pull", ignore_result=True)
def pull(model: str, node_id: str) -> None:
    rt = runtime.current()
    if not _ours(rt, node_id):
        return
    host = disallowed_registry(model, rt.runtime_config.current().pull_registries)
    if host is not None:  # the web refuses these; a message from elsewhere is refused here
        log.warning("refusing to pull %s: registry %s is not allowed", model, host)
        _record(rt, model, ReplicaStatus.FAILED)
        _news(rt, "pull_failed", model, error=f"registry {host} is not allowed")
        return
    _news(rt, "pull_started", model)
    last_sent, last_step = 0.0, None
    try:
        for progress in rt.engine.pull(model):
            step = progress.get("status")
            completed, total = progress.get("completed"), progress.get("total")
            now = time.monotonic()
            layer_done = bool(total) and completed == total
            if step != last_step or layer_done or now - last_sent >= PROGRESS_EVERY_S:
                _news(
                    rt,
                    "pull_progress",
                    model,
                    status=step,
                    digest=progress.get("digest"),
                    completed=completed or 0,
                    total=total,
                )
                if total:
                    _record(rt, model, ReplicaStatus.PULLING, completed=completed or 0, total=total)
                last_sent, last_step = now, step
    except EngineError as error:
        log.warning("pull of %s failed: %s", model, error)
        _record(rt, model, ReplicaStatus.FAILED)
        _news(rt, "pull_failed", model, error=str(error), error_code=error.code)
        return
    sync_models(rt)  # the engine lists it now: the replica becomes available
    _news(rt, "pulled", model)
    log.info("pulled %s", model)


@shared_task(name="models.delete", ignore_result=True)
def delete(model: str, node_id: str) -> None:
    rt = runtime.current()
    if not _ours(rt, node_id):
        return
    try:
        rt.engine.delete(model)
    except EngineError as error:
        if error.code != "engine_404":  # already gone is what was asked
            log.warning("removing %s failed: %s", model, error)
            _record(rt, model, ReplicaStatus.FAILED)
            _news(rt, "remove_failed", model, error=str(error), error_code=error.code)
            return
    sync_models(rt)  # announces "removed" and drops the replica
    log.info("removed %s from this node", model)
