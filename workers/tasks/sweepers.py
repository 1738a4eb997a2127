"""Periodic repairs run by beat: jobs whose worker died, jobs that never reached the broker.

Each sweep holds a Redis lock, so two beat processes by mistake still sweep once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task

from db.inference import mark_dispatched, requeue_expired_leases, undispatched
from workers import runtime
from workers.dispatch import dispatch

log = logging.getLogger(__name__)


def _locked(name: str) -> object:
    rt = runtime.current()
    return rt.redis.lock(
        f"omx:lock:{name}", timeout=max(5, rt.settings.sweep_interval_s * 4), blocking=False
    )


@shared_task(name="sweep.expired_leases", ignore_result=True)
def expired_leases() -> int:
    rt = runtime.current()
    lock = _locked("sweep.expired_leases")
    if not lock.acquire():  # type: ignore[attr-defined]
        return 0
    try:
        with rt.database.unit_of_work() as session:
            requeued = requeue_expired_leases(session=session)
        dispatched = []
        for request_id, model_name, priority in requeued:
            log.warning("request %s: its worker stopped renewing the lease; requeued", request_id)
            rt.events.publish(request_id, "status", status="restarted", reason="lease_expired")
            if dispatch(request_id, model_name, priority):
                dispatched.append(request_id)
        if dispatched:
            with rt.database.unit_of_work() as session:
                mark_dispatched(session=session, request_ids=dispatched)
        return len(requeued)
    finally:
        lock.release()  # type: ignore[attr-defined]


@shared_task(name="sweep.undispatched", ignore_result=True)
def undispatched_requests() -> int:
    rt = runtime.current()
    lock = _locked("sweep.undispatched")
    if not lock.acquire():  # type: ignore[attr-defined]
        return 0
    try:
        with rt.database.unit_of_work() as session:
            waiting = undispatched(
                session=session, older_than=timedelta(seconds=rt.settings.undispatched_grace_s)
            )
        dispatched = [rid for rid, model, priority in waiting if dispatch(rid, model, priority)]
        if dispatched:
            log.info("re-published %d request(s) that never reached the broker", len(dispatched))
            with rt.database.unit_of_work() as session:
                mark_dispatched(session=session, request_ids=dispatched)
        return len(dispatched)
    finally:
        lock.release()  # type: ignore[attr-defined]
