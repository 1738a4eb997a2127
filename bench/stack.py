"""What the benchmarks share: a scratch stack (database, Redis, the Ollama double, the web
process, a worker), process memory, and a few helpers for waiting and percentiles.

The stack is isolated from everything else on the machine: its own database
(`<db>_bench`, dropped and created at each start) and Redis logical database 14.
"""

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
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Stack:
    def __init__(
        self,
        slots: int,
        web_processes: int = 2,
        database_url: str | None = None,
        redis_url: str | None = None,
        **env: str,
    ) -> None:
        """`database_url` and `redis_url` name servers of the benchmark's own (bench.cost);
        by default the stack uses `<db>_bench` and Redis database 14 next to the configured
        ones."""
        settings = get_settings()
        url = make_url(settings.database_url)
        self.database_url = database_url or url.set(
            database=f"{url.database}_bench"
        ).render_as_string(False)
        self.redis_url = redis_url or settings.redis_url.rsplit("/", 1)[0] + "/14"
        self.port, self.double_port = free_port(), free_port()
        self.slots = slots
        self.processes: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []
        # What each name was spawned with, for `respawn`.
        self.commands: dict[str, tuple[tuple[str, ...], bool, dict[str, str]]] = {}
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
            # A full report runs longer than an access token lives by default.
            "ACCESS_TOKEN_TTL_S": "86400",
            # (a) submits for a model no node serves, so that no worker competes for the CPU.
            "QUEUE_WHILE_UNAVAILABLE": "true",
            # The bench's callers are plain users: their quotas stay on (every job pays the
            # quota's round trips) but never bind, so that one user may load the stack.
            "QUOTA_MAX_QUEUED_JOBS": "1000000",
            "QUOTA_MAX_RUNNING_JOBS": "10000",
            **env,
        }

    def spawn(self, name: str, *argv: str, own_env: bool = True, **env: str) -> None:
        """Run `argv` as part of the stack, logging to <logs>/<name>.log. `own_env=False`
        gives it this process's environment instead of the stack's (an engine must not see
        WEB_CONCURRENCY, which uvicorn also reads)."""
        self.commands[name] = (argv, own_env, env)
        self.names.append(name)
        self.processes.append(self._popen(name, "wb"))

    def respawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start `name` again as it was spawned, once it has ended (a supervisor's restart):
        the same command and environment, its log appended to; `pid_of` names the new one."""
        index = self.names.index(name)
        if self.processes[index].poll() is None:
            raise RuntimeError(f"{name} is still running")
        self.processes[index] = self._popen(name, "ab")
        return self.processes[index]

    def _popen(self, name: str, mode: str) -> subprocess.Popen[bytes]:
        argv, own_env, env = self.commands[name]
        base = self.env if own_env else dict(os.environ)
        with (self.logs / f"{name}.log").open(mode) as log:  # the child keeps its own copy
            return subprocess.Popen(
                argv, cwd=ROOT, env={**base, **env}, stdout=log, stderr=subprocess.STDOUT
            )

    def start(self) -> None:
        migrate.create_database(self.database_url, drop_existing=True)
        migrate.upgrade(self.database_url)
        Redis.from_url(self.redis_url).flushdb()
        self.spawn(
            "double",
            sys.executable,
            "-m",
            "bench.double",
            "--port",
            str(self.double_port),
            "--models",
            "llama3.2",
        )
        wait_http(f"http://127.0.0.1:{self.double_port}/")
        self.spawn("web", sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "wsgi:app")
        wait_http(f"http://127.0.0.1:{self.port}/health")

    def start_worker(
        self,
        engine_url: str | None = None,
        engine: str = "ollama",
        name: str = "bench@local",
        process: str = "worker",
    ) -> None:
        """One worker (`python -m workers run`) with `slots` threads, in front of the double
        unless another engine is named; `name` is its node's, `process` its name in the
        stack (and its log's), for a stack of several workers."""
        self.spawn(
            process,
            sys.executable,
            "-m",
            "workers",
            "run",
            "--engine",
            engine,
            "--engine-url",
            engine_url or f"http://127.0.0.1:{self.double_port}",
            "--slots",
            str(self.slots),
            "--name",
            name,
            LOG_LEVEL="INFO",  # its "ready." line is how we know it consumes
        )
        log = self.logs / f"{process}.log"
        wait_until(lambda: "ready." in log.read_text(errors="replace"))

    def start_beat(self) -> None:
        """Celery beat, as `make run` starts it (its schedule file among the logs)."""
        schedule = self.logs / "celerybeat-schedule"
        argv = ["-m", "celery", "-A", "workers.celery_app", "beat", "--schedule", str(schedule)]
        self.spawn("beat", sys.executable, *argv)
        # Its schedule is a shelve: a file or several (.db, .dat/.dir), by dbm flavour.
        wait_until(lambda: any(self.logs.glob(f"{schedule.name}*")))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def pid_of(self, name: str) -> int:
        """The process spawned as `name` ("web" is gunicorn's master)."""
        return self.processes[self.names.index(name)].pid

    def web_pids(self) -> list[int]:
        """The gunicorn worker processes (the master only supervises); read from /proc, as
        slim images have no pgrep."""
        master, children = self.pid_of("web"), []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
            except OSError:
                continue  # gone meanwhile
            if stat and int(stat.rsplit(")", 1)[1].split()[1]) == master:
                children.append(int(entry.name))
        return sorted(children)

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

    def api_key(self, token: str) -> str:
        """An API key with the inference scope, as front-door clients use."""
        created = post_json(
            f"{self.base}/api/v1/users/api-keys",
            {"name": "bench", "scopes": ["inference"], "current_password": PASSWORD},
            token,
        )
        return str(created["key"])


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


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }
