"""The Celery app: built from settings alone, so task modules and workers never need Flask.

`celery -A workers.celery_app worker|beat|flower` and `python -m workers run` both use it;
the web app calls `configure()` with its own settings so it publishes to the same broker.
"""

from __future__ import annotations

from celery import Celery

from config.settings import Settings, get_settings

# Kombu's Redis transport serves priority 0 first; our API says 9 is most urgent.
PRIORITY_STEPS = list(range(10))


# Maintenance (workers/tasks/maintenance.py, docs/maintenance.md), in seconds.
DASHBOARD_REFRESH_S = 60
AUDIT_PARTITIONS_S = 24 * 3600
CLEANUP_S = 3600


def queue_for_model(model_name: str) -> str:
    return f"model.{model_name}"


def queue_for_node(node_name: str) -> str:
    return f"node.{node_name}"


def broker_priority(api_priority: int) -> int:
    return 9 - api_priority


def configure(app: Celery, settings: Settings) -> None:
    # The broker must not hand a job to a second worker while the first may still be
    # generating it (celery#5935): wait longer than the longest generation allowed.
    visibility_timeout = settings.max_generation_s + 2 * settings.lease_ttl_s + 60
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="default",
        task_soft_time_limit=settings.max_generation_s,
        task_time_limit=settings.max_generation_s + 30,
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            "priority_steps": PRIORITY_STEPS,
            # Keep kombu's default separator between a queue's name and its priority step:
            # ":" would clash with model tags ("model.llama3.2:latest"). Queues are served
            # round robin (the default), so one busy model cannot starve another.
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
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
    # Publisher pools are per broker URL (kombu keeps one per URL); a second app in one
    # process (tests, tools) that names another broker must not reuse the first one's.
    # Old pools are dropped, not closed: kombu's registry may still hand them out.
    app._pool = None
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None


def create_celery_app(settings: Settings | None = None) -> Celery:
    app = Celery(
        "ollamamax",
        include=[
            "workers.tasks.inference",
            "workers.tasks.sweepers",
            "workers.tasks.maintenance",
            "workers.tasks.models",
        ],
    )
    configure(app, settings or get_settings())
    app.set_default()
    return app


celery_app = create_celery_app()
app = celery_app  # `celery -A workers.celery_app` looks for `app` or `celery`
