"""Periodic repairs run by beat: jobs whose worker died, jobs the broker never got or lost.

Each sweep holds a Redis lock, so two beat processes by mistake still sweep once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from redis.exceptions import RedisError

from db.models import RequestStatus
from db.recovery import requeue_expired_leases, undispatched
from workers import runtime
from workers.dispatch import republish
from workers.events import event

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
            swept = requeue_expired_leases(
                session=session, max_attempts=rt.settings.job_max_attempts
            )
        news = []
        for job in swept:
            log.warning(
                "request %s: its worker stopped renewing the lease; now %s",
                job.request_id,
                job.status,
            )
            news.append(
                event(
                    job.request_id,
                    "status",
                    # A requeued job's readers drop the text they have: it restarts.
                    status="restarted" if job.status == RequestStatus.QUEUED else job.status,
                    attempt=job.attempt,
                    reason="lease_expired",
                    user_id=job.user_id,
                )
            )
        if news:
            try:
                rt.events.publish_many(news)
            except RedisError as error:
                # Endings wait for Redis; a requeued job's next attempt says `restarted` itself.
                log.warning("could not announce %d swept job(s): %s", len(news), error)
                ended = [news_ for news_ in news if news_.fields["status"] != "restarted"]
                rt.backlog.add(ended, [], None)
        requeued = [
            (job.request_id, job.model_name, job.priority)
            for job in swept
            if job.status == RequestStatus.QUEUED
        ]
        republish(rt.celery, rt.database, requeued)
        return len(swept)
    finally:
        lock.release()  # type: ignore[attr-defined]


@shared_task(name="sweep.undispatched", ignore_result=True)
def undispatched_requests() -> int:
    rt = runtime.current()
    lock = _locked("sweep.undispatched")
    if not lock.acquire():  # type: ignore[attr-defined]
        return 0
    try:
        settings = rt.settings
        with rt.database.unit_of_work() as session:
            waiting = undispatched(
                session=session,
                older_than=timedelta(seconds=settings.undispatched_grace_s),
                lost_after=timedelta(seconds=settings.lost_dispatch_s),
            )
        dispatched = republish(rt.celery, rt.database, waiting)
        if dispatched:
            log.info(
                "published %d queued request(s) again (broker was away or lost them)",
                len(dispatched),
            )
        return len(dispatched)
    finally:
        lock.release()  # type: ignore[attr-defined]
