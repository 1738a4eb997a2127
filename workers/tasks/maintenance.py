"""Periodic upkeep run by beat (schedule in workers/celery_app.py, docs/maintenance.md):
stale nodes go offline, the dashboard view is refreshed, audit partitions are created ahead,
data older than the retention goes.

Each job is idempotent and holds a Redis lock of its own, so two beat processes by mistake
still run it once at a time; a run that finds the lock taken does nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from celery import shared_task
from celery.signals import beat_init
from redis.exceptions import LockError

from db.maintenance import (
    STALE_REASON,
    cleanup_old_data,
    create_audit_partitions,
    mark_stale_nodes_offline,
    refresh_dashboard_stats,
)
from db.models import NodeStatus
from workers import runtime
from workers.cache import VersionedCache
from workers.events import announce

log = logging.getLogger(__name__)

STALE_NODES = "maintenance.stale_nodes"
REFRESH_DASHBOARD = "maintenance.refresh_dashboard"
AUDIT_PARTITIONS = "maintenance.audit_partitions"
CLEANUP = "maintenance.cleanup"

# The API's cached node lists (web/fleet/caching.py), stale once a node changes status.
NODES_CACHE = "nodes"

# Months of audit partitions kept ready beyond this one (the migration creates as many).
AUDIT_MONTHS_AHEAD = 3
# How long each lock may outlive a run whose worker died: longer than a run ever takes,
# shorter than the job's interval, so a crash skips at most one run.
REFRESH_LOCK_S = 50
PARTITIONS_LOCK_S = 600
CLEANUP_LOCK_S = 50 * 60


@contextmanager
def _exclusive(name: str, timeout_s: float) -> Iterator[bool]:
    """Yields whether this run holds the job's lock (False: another run has it)."""
    lock = runtime.current().redis.lock(f"omx:lock:{name}", timeout=timeout_s, blocking=False)
    if not lock.acquire():
        log.debug("%s: another run holds the lock; skipped", name)
        yield False
        return
    try:
        yield True
    finally:
        try:
            lock.release()
        except LockError:  # it expired during the run (and maybe another run took it)
            log.warning("%s: ran longer than its lock (%ss)", name, timeout_s)


@shared_task(name=STALE_NODES, ignore_result=True)
def stale_nodes() -> int:
    """Nodes silent for NODE_STALE_AFTER_S go offline, each announced once."""
    rt = runtime.current()
    settings = rt.settings
    with _exclusive(STALE_NODES, max(5.0, settings.sweep_interval_s * 4)) as mine:
        if not mine:
            return 0
        with rt.database.unit_of_work() as session:
            stale = mark_stale_nodes_offline(
                session=session, stale_after=timedelta(seconds=settings.node_stale_after_s)
            )
    if stale:
        VersionedCache(rt.runtime_config.cache.redis, NODES_CACHE).invalidate()
    for node in stale:  # after the commit: what is announced has happened
        log.warning(
            "node %s: no heartbeat since %s (NODE_STALE_AFTER_S=%s); marked offline",
            node.name,
            node.last_heartbeat_at,
            settings.node_stale_after_s,
        )
        announce(
            rt.redis,
            "node_status",
            str(NodeStatus.OFFLINE),
            node=node.name,
            node_id=node.id,
            status=str(NodeStatus.OFFLINE),
            reason=STALE_REASON,
        )
    return len(stale)


@shared_task(name=REFRESH_DASHBOARD, ignore_result=True)
def refresh_dashboard() -> str | None:
    """Refresh the dashboard_stats view (concurrently: readers are never blocked)."""
    rt = runtime.current()
    with _exclusive(REFRESH_DASHBOARD, REFRESH_LOCK_S) as mine:
        if not mine:
            return None
        with rt.database.unit_of_work() as session:
            refreshed_at = refresh_dashboard_stats(session=session)
    log.debug("dashboard_stats refreshed at %s", refreshed_at.isoformat())  # every minute
    return refreshed_at.isoformat()


@shared_task(name=AUDIT_PARTITIONS, ignore_result=True)
def audit_partitions() -> list[str]:
    """Create this month's audit partition and the next AUDIT_MONTHS_AHEAD if missing."""
    rt = runtime.current()
    with _exclusive(AUDIT_PARTITIONS, PARTITIONS_LOCK_S) as mine:
        if not mine:
            return []
        with rt.database.unit_of_work() as session:
            created = create_audit_partitions(session=session, months_ahead=AUDIT_MONTHS_AHEAD)
    if created:
        log.info("audit partitions created: %s", ", ".join(created))
    else:
        log.debug("audit partitions: none missing (%d months ahead)", AUDIT_MONTHS_AHEAD)
    return created


@shared_task(name=CLEANUP, ignore_result=True)
def cleanup() -> dict[str, int]:
    """Remove what is older than the run-time retention (RETENTION_DAYS or its override)."""
    rt = runtime.current()
    with _exclusive(CLEANUP, CLEANUP_LOCK_S) as mine:
        if not mine:
            return {}
        days = rt.runtime_config.current().retention_days
        with rt.database.unit_of_work() as session:
            removed = cleanup_old_data(session=session, retention=timedelta(days=days))
    log.info(
        "cleanup (retention %d days) removed %s",
        days,
        ", ".join(f"{item}: {count}" for item, count in removed.items()),
    )
    return removed


@beat_init.connect
def _stop_on_sigterm_outside_the_handler(sender: Any, **_: Any) -> None:
    """Beat's own SIGTERM handler (celery.apps.beat, install_sync_handler) closes the
    broker connection from inside the handler. When the signal lands while beat publishes on
    RabbitMQ, the interrupted write holds py-amqp's frame-buffer lock and the handler's
    close waits for that lock in the same thread, forever: a beat stopped by its supervisor
    hung until SIGKILL (caught in CI by SIGABRT's stack: beat.sync inside
    basic_publish_confirm's write_frame). Here the handler only raises SystemExit; the write
    unwinds and lets go of the lock, and beat's loop saves the schedule and closes its
    connection in its own `finally`, as after Ctrl-C. beat_init comes after Celery installs
    its handler, in beat's main thread (an embedded beat's thread keeps Celery's)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(_signum: int, _frame: Any) -> None:
        raise SystemExit()

    for stopping in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stopping, stop)


@beat_init.connect
def _partitions_at_beat_start(sender: Any, **_: Any) -> None:
    """Beat's first daily run comes a day after it starts: ask for one run now."""
    try:
        sender.app.send_task(AUDIT_PARTITIONS, retry=False, expires=3600)
    except Exception as error:  # no broker yet: the daily run will do it
        log.warning("could not request audit partitions at beat start: %s", error)
