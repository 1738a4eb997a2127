"""Liveness and readiness probes.

`/health` touches nothing: it answers while the process can serve. `/health/ready`
checks each dependency at once, each within `HEALTH_CHECK_TIMEOUT_S`, and names the
ones that failed. A dependency that hangs makes its check time out; it never makes the
probe hang.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from flask import Blueprint, Flask, Response, current_app, jsonify
from kombu import Connection
from redis import Redis
from sqlalchemy import text

from config.settings import Settings
from db.session import Database
from web.openapi import PUBLIC, Reply, documented
from web.schemas.health import Liveness, Readiness

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

# Under gevent these threads are greenlets; a stuck check costs one of them, not a worker.
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readiness")


def check_postgres(app: Flask) -> None:
    database: Database = app.extensions["db"]
    with database.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_redis(app: Flask) -> None:
    probe: Redis = app.extensions["redis_probe"]
    probe.ping()


def check_broker(app: Flask) -> None:
    settings: Settings = app.extensions["settings"]
    timeout = settings.health_check_timeout_s
    with Connection(
        settings.broker_url,
        connect_timeout=timeout,
        transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    ) as connection:
        connection.ensure_connection(max_retries=0, timeout=timeout)


CHECKS: dict[str, Callable[[Flask], None]] = {
    "postgres": check_postgres,
    "redis": check_redis,
    "broker": check_broker,
}


def _timed(check: Callable[[Flask], None], app: Flask) -> float:
    started = time.perf_counter()
    check(app)
    return round((time.perf_counter() - started) * 1000, 2)


def run_checks(app: Flask, timeout_s: float) -> dict[str, dict[str, object]]:
    started = time.perf_counter()
    futures = {name: _executor.submit(_timed, check, app) for name, check in CHECKS.items()}
    results: dict[str, dict[str, object]] = {}
    for name, future in futures.items():
        remaining = max(0.0, timeout_s - (time.perf_counter() - started))
        try:
            results[name] = {"ok": True, "latency_ms": future.result(timeout=remaining)}
        except FutureTimeout:
            log.warning("readiness check %s timed out after %.1fs", name, timeout_s)
            results[name] = {"ok": False, "latency_ms": timeout_s * 1000, "error": "Timeout"}
        except Exception as error:  # a probe reports failures, it never raises them
            log.warning("readiness check %s failed: %s: %s", name, type(error).__name__, error)
            elapsed = round((time.perf_counter() - started) * 1000, 2)
            results[name] = {"ok": False, "latency_ms": elapsed, "error": type(error).__name__}
    return results


@bp.get("/health")
@documented("Liveness: the process serves", responses={200: Liveness}, security=PUBLIC)
def liveness() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/health/ready")
@documented(
    "Readiness: PostgreSQL, Redis and the broker answer",
    description="Each dependency is checked at once, each within HEALTH_CHECK_TIMEOUT_S.",
    responses={
        200: Readiness,
        503: Reply(Readiness, "At least one dependency failed; `error` names which."),
    },
    security=PUBLIC,
)
def readiness() -> tuple[Response, int]:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings: Settings = app.extensions["settings"]
    results = run_checks(app, settings.health_check_timeout_s)
    failed = sorted(name for name, result in results.items() if not result["ok"])
    if not failed:
        return jsonify({"status": "ready", "checks": results}), 200
    body = {
        "status": "unavailable",
        "checks": results,
        "error": {
            "code": "dependency_unavailable",
            "message": f"Not ready: {', '.join(failed)} unreachable.",
            "details": {"failed": failed},
        },
    }
    return jsonify(body), 503


def init_health(app: Flask, settings: Settings) -> None:
    # Its own client with short timeouts: the app's shared client must not inherit them.
    app.extensions["redis_probe"] = Redis.from_url(
        settings.cache_url,
        socket_connect_timeout=settings.health_check_timeout_s,
        socket_timeout=settings.health_check_timeout_s,
    )
    app.register_blueprint(bp)
