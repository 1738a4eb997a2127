"""Liveness and readiness probes.

`/health` touches nothing: it answers while the process can serve. `/health/ready`
checks each dependency with a short timeout and names the ones that failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify
from kombu import Connection
from redis import Redis
from sqlalchemy import text

from config.settings import Settings
from web.database import get_db

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


def check_postgres() -> None:
    with get_db().engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_redis() -> None:
    client: Redis = current_app.extensions["redis"]
    client.ping()


def check_broker() -> None:
    settings: Settings = current_app.extensions["settings"]
    timeout = settings.health_check_timeout_s
    with Connection(
        settings.broker_url,
        connect_timeout=timeout,
        transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    ) as connection:
        connection.ensure_connection(max_retries=0, timeout=timeout)


CHECKS: dict[str, Callable[[], None]] = {
    "postgres": check_postgres,
    "redis": check_redis,
    "broker": check_broker,
}


def _run(check: Callable[[], None]) -> dict[str, object]:
    started = time.perf_counter()
    try:
        check()
    except Exception as error:  # a probe reports failures, it never raises them
        log.warning("readiness check failed: %s: %s", type(error).__name__, error)
        return {
            "ok": False,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "error": type(error).__name__,
        }
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


@bp.get("/health")
def liveness() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/health/ready")
def readiness() -> tuple[Response, int]:
    results = {name: _run(check) for name, check in CHECKS.items()}
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
