"""Flower's /metrics behind its basic auth, on a real Flower process started as compose and
`make run` start it (docker/flowerconfig.py): Flower 2.2 alone serves /metrics to anyone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ops.supervisor import FLOWER_CONF
from tests.conftest import ROOT, _test_redis_url, free_port

OPERATOR = ("ops", "flower-operator-pw-5a1e")
TOKEN = "metrics-token-for-flower-0123456789abcdef"


def _start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = {
        **os.environ,
        "APP_ENV": "test",
        "REDIS_URL": _test_redis_url(),
        "FLOWER_BASIC_AUTH": ":".join(OPERATOR),
        **env,
    }
    if "METRICS_TOKEN" not in env:
        environment.pop("METRICS_TOKEN", None)
    log = (tmp_path / f"flower-{port}.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "celery", "-A", "workers.celery_app", "flower"),
            f"--port={port}",
            "--address=127.0.0.1",
            f"--conf={FLOWER_CONF}",
        ],
        cwd=ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/healthcheck", timeout=2)
            return process, url
        except requests.ConnectionError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.kill()
    pytest.fail((tmp_path / f"flower-{port}.log").read_text())


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[str]:
    process, url = _start(tmp_path, METRICS_TOKEN=TOKEN)
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_flower_metrics_want_its_basic_auth(flower: str) -> None:
    anonymous = requests.get(f"{flower}/metrics", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert "flower_" not in anonymous.text
    wrong = requests.get(f"{flower}/metrics", auth=(OPERATOR[0], "nope"), timeout=10)
    assert wrong.status_code == 401
    shown = requests.get(f"{flower}/metrics", auth=OPERATOR, timeout=10)
    assert shown.status_code == 200
    assert "flower_" in shown.text or "# HELP" in shown.text


def test_prometheus_logs_in_with_the_metrics_token(flower: str) -> None:
    scraped = requests.get(f"{flower}/metrics", auth=("prometheus", TOKEN), timeout=10)
    assert scraped.status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{flower}/metrics", headers=bearer, timeout=10).status_code == 200
    # The scrape credential opens /metrics only: no page, no API (task sending, worker
    # control), whichever way it is sent.
    for path in ("/workers", "/api/workers", "/api/tasks"):
        for way in ({"auth": ("prometheus", TOKEN)}, {"headers": bearer}):
            denied = requests.get(f"{flower}{path}", timeout=10, allow_redirects=False, **way)  # type: ignore[arg-type]
            assert denied.status_code in (401, 403), (path, way, denied.status_code)
    sent = requests.post(
        f"{flower}/api/task/send-task/models.delete",
        auth=("prometheus", TOKEN),
        json={"args": ["x", "y"]},
        timeout=10,
        allow_redirects=False,
    )
    assert sent.status_code in (401, 403)
    # The operator's pair still opens every page; the health check stays open (it says OK).
    assert requests.get(f"{flower}/workers", auth=OPERATOR, timeout=10).status_code == 200
    assert requests.get(f"{flower}/healthcheck", timeout=10).text == "OK"


def test_without_a_metrics_token_only_the_operator_gets_in(tmp_path: Path) -> None:
    process, url = _start(tmp_path)
    try:
        assert requests.get(f"{url}/metrics", timeout=10).status_code == 401
        refused = requests.get(f"{url}/metrics", auth=("prometheus", ""), timeout=10)
        assert refused.status_code == 401
        assert requests.get(f"{url}/metrics", auth=OPERATOR, timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
