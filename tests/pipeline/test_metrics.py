"""GET /metrics after real traffic: the API under gunicorn with two worker processes (the
multiprocess files are summed whichever process answers) and a worker's own endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from db.models import Node
from db.session import Database
from tests.conftest import LiveServer, free_port, start_live_server, stop_live_server
from tests.pipeline.conftest import Double, Worker, wait_for
from tests.pipeline.jobs import finished
from tests.support.ws import connect, read_until_closed, token_of

pytestmark = pytest.mark.usefixtures("fresh_double")
NODE = "metrics@test"
MODEL = "llama3.2:latest"


WORKER_METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def server(
    settings_overrides: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    live = start_live_server(
        settings_overrides,
        tmp_path_factory.mktemp("metrics_server"),
        WEB_CONCURRENCY="2",
        RATELIMIT_LOGIN="2/minute",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path_factory.mktemp("prometheus")),
    )
    yield live
    stop_live_server(live)


@pytest.fixture(scope="module", autouse=True)
def worker(double: Double, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(
        double.url, name=NODE, slots=3, env={"WORKER_METRICS_PORT": str(WORKER_METRICS_PORT)}
    )


def _samples(url: str, **kwargs: Any) -> dict[str, list[Any]]:
    response = requests.get(url, timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.text):
        families.setdefault(family.name, []).extend(family.samples)
    return families


def _value(families: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(
        s.value
        for samples in families.values()
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _run_a_job(server: LiveServer, headers: dict[str, str]) -> dict[str, Any]:
    submitted = requests.post(
        f"{server.url}/api/v1/inference/generate",
        json={
            "model": "llama3.2",
            "prompt": "why is the sky blue?",
            "options": {"num_predict": 20},
        },
        headers=headers,
        timeout=10,
    ).json()
    received = read_until_closed(connect(server.url, submitted["links"]["ws"], token_of(headers)))
    assert received.of_type("token")
    return submitted


def test_every_family_is_exposed_with_sane_values_after_a_job(
    server: LiveServer,
    api: FlaskClient,
    user_headers: dict[str, str],
    committed: Database,
) -> None:
    jobs = [_run_a_job(server, user_headers) for _ in range(4)]
    for job in jobs:
        assert finished(api, user_headers, job["id"])["status"] == "completed"
    for _ in range(3):  # the login limit is 2/minute here: one refusal at least
        requests.post(
            f"{server.url}/api/v1/auth/login",
            json={"email": "x@y.z", "password": "p"},
            timeout=10,
        )
    with committed.unit_of_work() as session:  # as a GPU node's heartbeat reports it
        session.execute(
            update(Node)
            .where(Node.name == NODE)
            .values(
                gpu_index=0,
                gpu_memory_total_bytes=80 * 2**30,
                gpu_memory_free_bytes=60 * 2**30,
                gpu_utilization_pct=42.0,
            )
        )

    web = _samples(f"{server.url}/metrics")
    route = "/api/v1/inference/generate"
    # Four submits over two processes: the counts are summed across them.
    assert _value(web, "ollamamax_http_requests_total", route=route, status="202") == 4
    assert _value(web, "ollamamax_http_request_duration_seconds_count", route=route) == 4
    assert _value(web, "ollamamax_inference_requests_total", status="queued", model=MODEL) == 4
    assert _value(web, "ollamamax_rate_limit_rejections_total", route="/api/v1/auth/login") >= 1
    assert _value(web, "ollamamax_websocket_frames_sent_total", kind="request") >= 4 * 3
    assert _value(web, "ollamamax_websocket_connections", kind="request") == 0  # all closed
    assert "ollamamax_db_pool_connections_in_use" in web
    assert "ollamamax_queue_depth" in web  # nothing waits now: the family, no series
    assert _value(web, "ollamamax_node_up", node=NODE) == 1
    assert _value(web, "ollamamax_node_jobs_running", node=NODE) == 0
    assert _value(web, "ollamamax_node_slots_free", node=NODE) == 3
    assert _value(web, "ollamamax_gpu_memory_total_bytes", node=NODE, gpu="0") == 80 * 2**30
    assert _value(web, "ollamamax_gpu_memory_used_bytes", node=NODE, gpu="0") == 20 * 2**30
    assert _value(web, "ollamamax_gpu_utilization_ratio", node=NODE, gpu="0") == pytest.approx(0.42)

    own = _samples(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics")
    assert _value(own, "ollamamax_inference_requests_total", status="completed", model=MODEL) == 4
    assert _value(own, "ollamamax_queue_wait_seconds_count", model=MODEL, priority="5") == 4
    assert _value(own, "ollamamax_time_to_first_token_seconds_count", model=MODEL, node=NODE) == 4
    assert _value(own, "ollamamax_tokens_per_second_count", model=MODEL, node=NODE) == 4
    assert _value(own, "ollamamax_tokens_per_second_sum", model=MODEL, node=NODE) > 0


def test_a_queued_job_shows_in_the_queue_depth(
    server: LiveServer, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    double.configure(token_delay_s=0.2)  # three slots busy for a while: the fourth waits
    for _ in range(4):
        requests.post(
            f"{server.url}/api/v1/inference/generate",
            json={
                "model": "llama3.2",
                "prompt": "x",
                "options": {"num_predict": 30},
                "priority": 6,  # a user's ceiling (USER_MAX_PRIORITY): stored as sent
            },
            headers=user_headers,
            timeout=10,
        )

    def waiting_and_running() -> bool:
        web = _samples(f"{server.url}/metrics")
        return (
            _value(web, "ollamamax_queue_depth", model=MODEL, priority="6") >= 1
            and _value(web, "ollamamax_node_jobs_running", node=NODE) == 3
            and _value(web, "ollamamax_node_slots_free", node=NODE) == 0
        )

    wait_for(waiting_and_running, timeout=15, interval=0.1)


def test_the_token_guards_metrics_when_set(
    settings_overrides: dict[str, Any], tmp_path: Path
) -> None:
    guarded = start_live_server(settings_overrides, tmp_path, METRICS_TOKEN="s3cret")
    try:
        refused = requests.get(f"{guarded.url}/metrics", timeout=10)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert _samples(f"{guarded.url}/metrics", headers={"Authorization": "Bearer s3cret"})
    finally:
        stop_live_server(guarded)
