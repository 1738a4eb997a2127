"""Gunicorn settings for the web process: `gunicorn -c config/gunicorn.py wsgi:app`.

gevent workers let one process hold many idle WebSockets and slow streams;
psycopg2 is made cooperative so a query yields to other greenlets instead of
blocking the whole worker.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from config.settings import get_settings

_settings = get_settings()

# Each worker process writes its Prometheus samples here and GET /metrics sums them all
# (prometheus_client's multiprocess mode). Set before any worker imports the client: a folder
# of our own unless the operator names one; its sample files are emptied at start so a
# restart never adds old counts.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ollamamax-metrics-")

bind = f"{_settings.api_host}:{_settings.api_port}"
worker_class = "gevent"
workers = _settings.web_concurrency
worker_connections = _settings.web_worker_connections
timeout = 60
if _settings.gunicorn_certfile or _settings.gunicorn_keyfile:
    # Direct TLS, for deployments without a terminating proxy (docs/deploy.md).
    certfile = _settings.gunicorn_certfile
    keyfile = _settings.gunicorn_keyfile
graceful_timeout = 30
keepalive = 5
# Our app writes one structured access line per request; gunicorn's would duplicate it.
# One control socket path per user would be shared by every gunicorn on the host; we use none.
control_socket_disable = True
accesslog = None
# accesslog=None is not enough: with logconfig_dict set, gunicorn still builds its access
# line's atoms for every request (3 % of a submission's CPU) and hands them to a logger.
logger_class = "config.gunicorn_logging.NoAccessLogger"
errorlog = "-"
loglevel = _settings.log_level.lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": _settings.log_level.upper(), "handlers": []},
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level.upper(), "propagate": True},
    },
}


def post_fork(server: object, worker: object) -> None:
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def post_worker_init(worker: Any) -> None:
    """Watch for the worker being told to stop (SIGTERM sets `alive` False; gunicorn then
    waits up to graceful_timeout for open connections): close WebSockets with 1001 at once,
    so clients reconnect elsewhere instead of hanging until they are cut."""
    import threading
    import time

    def watch() -> None:
        while worker.alive:
            time.sleep(0.2)
        closed = worker.wsgi.extensions["relay"].sockets.going_away()
        worker.log.info("stopping: closed %d websockets with 1001", closed)

    threading.Thread(target=watch, name="going-away", daemon=True).start()


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    # A dead worker's live gauges (open sockets, pool in use) must stop counting.
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def on_starting(server: object) -> None:
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for samples in folder.glob("*.db"):  # only prometheus_client's own files
        samples.unlink(missing_ok=True)

    from config.logging import configure_logging

    configure_logging(_settings.log_level, _settings.log_format, _settings.log_levels)
