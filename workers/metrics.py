"""What a worker measures about the jobs it runs, served on its own /metrics.

A worker is one process (a pool of threads), so prometheus_client's default registry is
exact here; Prometheus scrapes each worker (`--metrics-port`) as well as the API, whose
/metrics carries the fleet-wide view read from the database (queue depth, slots, GPUs).
Labels are bounded: models come from the registry, nodes from the fleet, statuses are fixed.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import (
    ThreadingWSGIServer,
    _get_best_family,
    _SilentHandler,
)

from config.settings import get_settings

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# Seconds: from 10 ms (a warm engine) to 10 min (a long queue).
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
RATE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)

# The API counts the same family for what it accepts ("queued") and cancels before a worker
# claims it; sum over instances for the whole picture.
INFERENCE_REQUESTS = Counter(
    "ollamamax_inference_requests",
    "Inference requests by the status they reached here, and model.",
    ["status", "model"],
)
QUEUE_WAIT = Histogram(
    "ollamamax_queue_wait_seconds",
    "Time from submission to a worker claiming the job.",
    ["model", "priority"],
    buckets=WAIT_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "ollamamax_time_to_first_token_seconds",
    "Time from the worker starting the job to the engine's first token.",
    ["model", "node"],
    buckets=TTFT_BUCKETS,
)
TOKENS_PER_SECOND = Histogram(
    "ollamamax_tokens_per_second",
    "Generation speed of a completed job (eval_count / eval_duration).",
    ["model", "node"],
    buckets=RATE_BUCKETS,
)
ENGINE_FAULTS = Counter(
    "ollamamax_engine_faults",
    "Engine faults seen while running jobs, by code (retried or not).",
    ["code", "node"],
)


def job_claimed(
    model: str, priority: int, attempt: int, queued_at: datetime, started_at: datetime
) -> None:
    # Both times are the database's clock. A retried job keeps its first queued_at, so only
    # first attempts say how long the queue made a caller wait.
    if attempt == 1:
        QUEUE_WAIT.labels(model, str(priority)).observe(
            max((started_at - queued_at).total_seconds(), 0.0)
        )


def job_finished(
    *,
    status: str,
    model: str,
    node: str,
    seconds_to_first_token: float | None,
    eval_count: int | None,
    eval_duration_ns: int | None,
) -> None:
    INFERENCE_REQUESTS.labels(status, model).inc()
    if seconds_to_first_token is not None:
        TIME_TO_FIRST_TOKEN.labels(model, node).observe(seconds_to_first_token)
    if status == "completed" and eval_count and eval_duration_ns:
        TOKENS_PER_SECOND.labels(model, node).observe(eval_count / (eval_duration_ns / 1e9))


def bearer_matches(authorization: str, expected: str) -> bool:
    """Whether an Authorization header is `Bearer <expected>` (the scheme in any case), the
    token compared in constant time. The API's /metrics (web/metrics.py) uses it too."""
    scheme, _, given = authorization.strip().partition(" ")
    matches = hmac.compare_digest(given.strip().encode(), expected.encode())
    return scheme.lower() == "bearer" and matches


def guarded(app: WSGIApp, token: str) -> WSGIApp:
    """`app` answering only requests that carry `Authorization: Bearer <token>`; 401 else."""

    def guard(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if bearer_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
            return app(environ, start_response)  # type: ignore[no-any-return]
        body = b"GET /metrics wants the METRICS_TOKEN as a bearer token.\n"
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", 'Bearer realm="metrics"'),
            ],
        )
        return [body]

    return guard


def serve(port: int, host: str, token: str | None = None) -> None:
    """GET /metrics on `host:port`, from a daemon thread. With a token (by default the
    METRICS_TOKEN setting; "" for none) only callers that send it as a bearer token get
    an answer, as on the API's /metrics."""
    if token is None:
        secret = get_settings().metrics_token
        token = secret.get_secret_value() if secret else ""

    class Server(ThreadingWSGIServer):
        pass

    Server.address_family, address = _get_best_family(host, port)
    app = make_wsgi_app(REGISTRY)
    httpd = make_server(
        address, port, guarded(app, token) if token else app, Server, handler_class=_SilentHandler
    )
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
