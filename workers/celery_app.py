"""The Celery app, built from settings by one factory that every side calls: the web app
(to publish), `python -m workers run` (to consume) and the `celery` command line (beat,
Flower, inspect), which finds `app` here. Tasks are `@shared_task`s published by name
(workers/dispatch.py), so no side imports another's task modules to send work.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from config.settings import Settings, get_settings
from workers.brokers import celery_options

# Maintenance (workers/tasks/maintenance.py, docs/maintenance.md), in seconds.
DASHBOARD_REFRESH_S = 60
AUDIT_PARTITIONS_S = 24 * 3600
CLEANUP_S = 3600


def _configure(app: Celery, settings: Settings) -> None:
    app.conf.update(
        broker_url=settings.broker_url,
        # No task returns a result anyone reads. Celery itself still takes a backend from
        # CELERY_RESULT_BACKEND in the environment, whatever this says: publishing with
        # ignore_result (workers/dispatch.py) keeps it from subscribing to results.
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="default",
        task_soft_time_limit=settings.max_generation_s,
        task_time_limit=settings.max_generation_s + 30,
        # Redis or RabbitMQ: the transport, priorities, redelivery (workers/brokers.py).
        **celery_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Celery's task events (received, started, succeeded) are Flower's task list and
        # nobody else's: off until a monitor asks. Flower sends `enable_events` to every
        # worker each few seconds while it runs (late workers included), so its task view
        # fills as before; a fleet without Flower no longer pays for them (docs/benchmarks.md).
        worker_send_task_events=False,
        task_send_sent_event=False,
        timezone="UTC",
        beat_schedule={
            # A sweep that waited longer than one interval is superseded by the next one.
            "sweep-expired-leases": {
                "task": "sweep.expired_leases",
                "schedule": settings.sweep_interval_s,
                "options": {"expires": settings.sweep_interval_s * 2},
            },
            "sweep-undispatched": {
                "task": "sweep.undispatched",
                "schedule": settings.sweep_interval_s,
                "options": {"expires": settings.sweep_interval_s * 2},
            },
            "maintenance-stale-nodes": {
                "task": "maintenance.stale_nodes",
                "schedule": settings.sweep_interval_s,
                "options": {"expires": settings.sweep_interval_s * 2},
            },
            # The slower jobs: a run that waited a whole interval is superseded by the next.
            "maintenance-refresh-dashboard": {
                "task": "maintenance.refresh_dashboard",
                "schedule": DASHBOARD_REFRESH_S,
                "options": {"expires": DASHBOARD_REFRESH_S},
            },
            "maintenance-audit-partitions": {
                "task": "maintenance.audit_partitions",
                "schedule": AUDIT_PARTITIONS_S,
                "options": {"expires": AUDIT_PARTITIONS_S},
            },
            "maintenance-cleanup": {
                "task": "maintenance.cleanup",
                "schedule": CLEANUP_S,
                "options": {"expires": CLEANUP_S},
            },
        },
    )


TASK_MODULES = [
    "workers.tasks.inference",
    "workers.tasks.sweepers",
    "workers.tasks.maintenance",
    "workers.tasks.models",
]


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app for `settings`' broker. Each caller builds its own (one per process,
    or per test app), so none reconfigures another's."""
    app = Celery("ollamamax", include=TASK_MODULES, set_as_current=False)
    _configure(app, settings)
    return app


_cli_app: Celery | None = None


def __getattr__(name: str) -> Any:
    """`app` (and `celery_app`) for the `celery -A workers.celery_app` command line, built
    from the environment on first use and made the default for its `@shared_task`s."""
    global _cli_app
    if name not in ("app", "celery_app"):
        raise AttributeError(name)
    if _cli_app is None:
        _cli_app = create_celery_app(get_settings())
        _cli_app.set_default()
    return _cli_app
