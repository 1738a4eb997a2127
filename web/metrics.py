"""GET /metrics: the API's own measurements and the fleet's state, for Prometheus.

Two kinds of families:
- measured in this process (HTTP, WebSockets, DB pool, rate limits, accepted requests).
  Under gunicorn each worker process writes them to PROMETHEUS_MULTIPROC_DIR (set by
  config/gunicorn.py) and a scrape sums every process's files, whichever process answers;
- read from the database at scrape time (queue depth, nodes' running jobs and free slots,
  GPU memory and utilisation from the nodes' heartbeats): one truth, whichever process or
  replica answers.
Job timings (queue wait, time to first token, tokens/s) are measured where they happen, by
each worker on its own /metrics (workers/metrics.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from db.models import InferenceRequest, Node, NodeStatus, RequestStatus
from db.session import Database
from db.stats import queue_by_user
from web.errors import Unauthorized
from web.extensions import current_settings
from web.openapi import METRICS_TOKEN, Reply, documented
from workers.metrics import bearer_matches

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

HTTP_REQUESTS = Counter(
    "ollamamax_http_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "ollamamax_http_request_duration_seconds",
    "Time to the response's headers (a stream's body is not included), by route template.",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBSOCKETS = Gauge(
    "ollamamax_websocket_connections",
    "Open WebSocket connections, by kind (request stream or topics).",
    ["kind"],
    multiprocess_mode="livesum",
)
WEBSOCKET_FRAMES = Counter(
    "ollamamax_websocket_frames_sent",
    "Frames relayed to WebSocket clients (events and heartbeats), by kind.",
    ["kind"],
)
DB_POOL_IN_USE = Gauge(
    "ollamamax_db_pool_connections_in_use",
    "Database connections checked out of the web processes' pools (sampled per request).",
    multiprocess_mode="livesum",
)
RATE_LIMITED = Counter(
    "ollamamax_rate_limit_rejections",
    "Requests refused with 429 by the rate limiter, by route template.",
    ["route"],
)


def route_label() -> str:
    """The route template, never the raw path: ids in paths would explode cardinality."""
    return request.url_rule.rule if request.url_rule else "<unmatched>"


def record_request(status: int) -> None:
    started = g.get("request_started")
    route = route_label()
    HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
    if started is not None:
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
    database: Database | None = current_app.extensions.get("db")
    if database is not None:
        checked_out = getattr(database.engine.pool, "checkedout", None)
        if checked_out is not None:
            DB_POOL_IN_USE.set(checked_out())


class FleetCollector(Collector):
    """The fleet as the database knows it, read at scrape time."""

    def __init__(self, database: Database, top_users: int = 10) -> None:
        self.database = database
        self.top_users = top_users

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._read()
        except SQLAlchemyError as error:  # the scrape still answers with what else it has
            log.warning("fleet metrics unavailable: %s", error)

    def _read(self) -> Iterable[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "ollamamax_queue_depth", "Jobs waiting for a worker.", labels=["model", "priority"]
        )
        running = GaugeMetricFamily(
            "ollamamax_node_jobs_running", "Jobs running on a node.", labels=["node"]
        )
        free = GaugeMetricFamily(
            "ollamamax_node_slots_free",
            "Free job slots on an online, undrained node.",
            labels=["node"],
        )
        up = GaugeMetricFamily("ollamamax_node_up", "1 if the node is online.", labels=["node"])
        gpu_total = GaugeMetricFamily(
            "ollamamax_gpu_memory_total_bytes", "GPU memory.", labels=["node", "gpu"]
        )
        gpu_used = GaugeMetricFamily(
            "ollamamax_gpu_memory_used_bytes", "GPU memory in use.", labels=["node", "gpu"]
        )
        gpu_busy = GaugeMetricFamily(
            "ollamamax_gpu_utilization_ratio", "GPU utilisation, 0 to 1.", labels=["node", "gpu"]
        )
        depth = GaugeMetricFamily(
            "ollamamax_user_queue_depth",
            "Jobs waiting, per user: the top FAIR_SHARE_METRICS_TOP_USERS users by depth, the "
            'rest as user="_other".',
            labels=["user"],
        )
        wait = GaugeMetricFamily(
            "ollamamax_user_queue_wait_seconds",
            "How long the user's longest-waiting job has waited (same users as the depth).",
            labels=["user"],
        )
        with self.database.unit_of_work() as session:
            for row in queue_by_user(session=session, top=self.top_users):
                depth.add_metric([row.user], row.queued)
                wait.add_metric([row.user], row.oldest_wait_s)
            for model, priority, count in session.execute(
                select(InferenceRequest.model_name, InferenceRequest.priority, func.count())
                .where(InferenceRequest.status == RequestStatus.QUEUED)
                .group_by(InferenceRequest.model_name, InferenceRequest.priority)
            ):
                queue.add_metric([model, str(priority)], count)
            busy = dict(
                session.execute(
                    select(InferenceRequest.node_id, func.count())
                    .where(InferenceRequest.status == RequestStatus.RUNNING)
                    .group_by(InferenceRequest.node_id)
                ).all()
            )
            nodes = session.scalars(select(Node).order_by(Node.name)).all()
            for node in nodes:
                jobs = busy.get(node.id, 0)
                online = node.status == NodeStatus.ONLINE
                running.add_metric([node.name], jobs)
                takes_work = online and not node.drained
                free.add_metric([node.name], max(node.slots - jobs, 0) if takes_work else 0)
                up.add_metric([node.name], 1 if online else 0)
                if node.gpu_index is None or node.gpu_memory_total_bytes is None:
                    continue
                labels = [node.name, str(node.gpu_index)]
                gpu_total.add_metric(labels, node.gpu_memory_total_bytes)
                if node.gpu_memory_free_bytes is not None:
                    used = node.gpu_memory_total_bytes - node.gpu_memory_free_bytes
                    gpu_used.add_metric(labels, used)
                if node.gpu_utilization_pct is not None:
                    gpu_busy.add_metric(labels, node.gpu_utilization_pct / 100)
        return (queue, depth, wait, running, free, up, gpu_total, gpu_used, gpu_busy)


def _process_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # every gunicorn worker's files
        return registry
    return REGISTRY


def _authorize() -> None:
    # Production never gets here without a token unless METRICS_PUBLIC=true was chosen
    # (config/settings.py refuses to start otherwise).
    token = current_settings().metrics_token
    expected = token.get_secret_value() if token else ""
    if not expected:
        return
    if not bearer_matches(request.headers.get("Authorization", ""), expected):
        raise Unauthorized(
            "GET /metrics wants the METRICS_TOKEN as a bearer token.",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )


@bp.get("/metrics")
@documented(
    "Prometheus metrics of the web processes and the fleet",
    description="Send METRICS_TOKEN as a bearer token. Open only where no token is set: "
    "development, or production with METRICS_PUBLIC=true.",
    responses={
        200: Reply(media_types=("text/plain",)),
        401: "METRICS_TOKEN is set and was not sent.",
    },
    security=[METRICS_TOKEN],
)
def metrics() -> Response:
    _authorize()
    fleet = CollectorRegistry(auto_describe=False)
    top_users = current_settings().fair_share_metrics_top_users
    fleet.register(FleetCollector(current_app.extensions["db"], top_users))
    body = generate_latest(_process_registry()) + generate_latest(fleet)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


def init_metrics(app: Flask) -> None:
    app.register_blueprint(bp)
