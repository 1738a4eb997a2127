"""What the benchmarks share: a scratch stack (database, Redis, the Ollama double, the web
process, a worker) and a few helpers for waiting and percentiles."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from redis import Redis
from sqlalchemy.engine import make_url

from config.settings import get_settings
from db import migrate
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PASSWORD = "bench-password-long"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Stack:
    def __init__(self, slots: int, web_processes: int = 2, **env: str) -> None:
        settings = get_settings()
        url = make_url(settings.database_url)
        self.database_url = url.set(database=f"{url.database}_bench").render_as_string(False)
        self.redis_url = settings.redis_url.rsplit("/", 1)[0] + "/14"
        self.port, self.double_port = free_port(), free_port()
        self.slots = slots
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs = Path(tempfile.mkdtemp(prefix="omx-bench-"))
        self.env = {
            **os.environ,
            "APP_ENV": "development",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "API_PORT": str(self.port),
            "WEB_CONCURRENCY": str(web_processes),
            "LOG_LEVEL": "WARNING",
            "RATELIMIT_ENABLED": "false",
            "BCRYPT_ROUNDS": "4",
            # (a) submits for a model no node serves, so that no worker competes for the CPU.
            "QUEUE_WHILE_UNAVAILABLE": "true",
            **env,
        }

    def spawn(self, name: str, *argv: str, **env: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                argv, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
            )
        )

    def start(self) -> None:
        migrate.create_database(self.database_url, drop_existing=True)
        migrate.upgrade(self.database_url)
        Redis.from_url(self.redis_url).flushdb()
        self.spawn(
            "double",
            sys.executable,
            "-m",
            "tests.ollama_double",
            "--port",
            str(self.double_port),
            "--models",
            "llama3.2",
        )
        wait_http(f"http://127.0.0.1:{self.double_port}/")
        self.spawn("web", sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "wsgi:app")
        wait_http(f"http://127.0.0.1:{self.port}/health")

    def start_worker(self) -> None:
        self.spawn(
            "worker",
            sys.executable,
            "-m",
            "workers",
            "run",
            "--engine-url",
            f"http://127.0.0.1:{self.double_port}",
            "--slots",
            str(self.slots),
            "--name",
            "bench@local",
            LOG_LEVEL="INFO",  # its "ready." line is how we know it consumes
        )
        wait_until(lambda: "ready." in (self.logs / "worker.log").read_text(errors="replace"))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configure_double(self, **knobs: Any) -> None:
        post_json(f"http://127.0.0.1:{self.double_port}/_double/config", knobs)

    def token(self) -> str:
        name = f"bench{uuid.uuid4().hex[:8]}"
        post_json(
            f"{self.base}/api/v1/auth/register",
            {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        return str(
            post_json(f"{self.base}/api/v1/auth/login", {"username": name, "password": PASSWORD})[
                "access_token"
            ]
        )


def post_json(url: str, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as answer:
        return json.loads(answer.read())


def wait_http(url: str, timeout: float = 60) -> None:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    wait_until(answers, timeout)


def wait_until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the stack did not come up; see the logs in /tmp/omx-bench-*")
        time.sleep(0.1)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values),
    }
