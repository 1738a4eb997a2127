"""/metrics with METRICS_TOKEN: the API's, on the live gunicorn server, and a worker's own
endpoint (workers/metrics.py) answer only `Authorization: Bearer <METRICS_TOKEN>`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port, start_live_server, stop_live_server
from workers import metrics

TOKEN = "metrics-token-" + "Hx3-" * 8
REFUSED = (
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": f"Bearer {TOKEN}x"},
)


def test_the_apis_metrics_want_the_token(
    settings_overrides: dict[str, Any], tmp_path: Path
) -> None:
    server = start_live_server(settings_overrides, tmp_path, METRICS_TOKEN=TOKEN)
    try:
        for headers in REFUSED:
            refused = requests.get(f"{server.url}/metrics", headers=headers, timeout=10)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert "ollamamax_" not in refused.text
        for scheme in ("Bearer", "bearer"):
            headers = {"Authorization": f"{scheme} {TOKEN}"}
            shown = requests.get(f"{server.url}/metrics", headers=headers, timeout=10)
            assert shown.status_code == 200
            assert "ollamamax_http_requests_total" in shown.text
    finally:
        stop_live_server(server)


def _get(url: str, **headers: str) -> requests.Response:
    deadline = time.monotonic() + 10
    while True:
        try:
            return requests.get(url, headers=headers, timeout=5)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_workers_metrics_want_the_token() -> None:
    port = free_port()
    metrics.serve(port, "127.0.0.1", TOKEN)
    url = f"http://127.0.0.1:{port}/metrics"
    for headers in REFUSED:
        refused = _get(url, **headers)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "ollamamax_" not in refused.text
    shown = _get(url, Authorization=f"Bearer {TOKEN}")
    assert shown.status_code == 200
    assert "ollamamax_queue_wait_seconds" in shown.text


def test_a_worker_without_a_token_serves_metrics_openly() -> None:
    port = free_port()
    metrics.serve(port, "127.0.0.1", "")
    assert _get(f"http://127.0.0.1:{port}/metrics").status_code == 200


@pytest.mark.parametrize("header", ["Bearer", "", "Bearer  ", "Token abc"])
def test_a_malformed_header_never_matches(header: str) -> None:
    assert not metrics.bearer_matches(header, TOKEN)
    assert metrics.bearer_matches(f"  BEARER {TOKEN} ", TOKEN)
