"""A multi-host OllamaMax on one machine, each host a network namespace (tests/cluster/netns.py):

    client (.100) ──► lb (.5, HAProxy :8080) ──► api1 (.11), api2 (.12)  gunicorn/gevent :11400
                                                       │
    gpu1 (.21), gpu2 (.22), gpu3 (.23) ───────────────►data (.2): PostgreSQL :5432, Redis :6379,
      each: the Ollama double on its own 127.0.0.1,      broker (Redis :6380), beat
      `python -m workers run --gpu 0` beside it

    with Cluster() as cluster:
        cluster.add_gpu_host()        # a fourth, as an operator adds one to a running fleet
        cluster.wire.cut(cluster.gpus[0].host)

Everything is torn down on exit, errors included; a run that died leaves namespaces that the
next run removes. Settings (leases, heartbeats) are shortened so faults play out in seconds.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from db.models import Role
from tests.cluster import netns
from tests.cluster.client import ClientHost
from tests.cluster.hosts import Host, Wire
from tests.cluster.services import (
    API_PORT,
    PROXY_PORT,
    Broker,
    DataHost,
    RedisBroker,
    haproxy_binary,
    haproxy_config,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("llama3.2:latest", "qwen3:8b")
METRICS_TOKEN = "cluster-metrics-token"
# Flower on the data host, as operators run it beside beat: basic auth, port 5555.
FLOWER_PORT = 5555
FLOWER_AUTH = ("operator", "cluster-flower-password")
FLOWER_CONF = ROOT / "docker" / "flowerconfig.py"
# Short clocks, as tests/pipeline/conftest.py uses them, so leases, sweeps and heartbeats
# happen within a test.
FAST = {
    "LEASE_TTL_S": "3",
    "SWEEP_INTERVAL_S": "0.5",
    "UNDISPATCHED_GRACE_S": "1",
    # A worker cut off between taking a message and claiming its row holds that job until
    # the outbox sweeper publishes it again: 300 s in production, seconds here.
    "LOST_DISPATCH_S": "5",
    "HEARTBEAT_INTERVAL_S": "1",
    "NODE_STALE_AFTER_S": "4",
    "ENGINE_RETRY_BACKOFF_S": "0.05",
    "ENGINE_STALL_TIMEOUT_S": "2",
    "TOKEN_COALESCE_MS": "0",
    "WS_HEARTBEAT_S": "0.5",
    "SHUTDOWN_GRACE_S": "2",
    "DB_CONNECT_TIMEOUT_S": "2",
    "DB_IDLE_IN_TRANSACTION_TIMEOUT_S": "3",
    "HEALTH_CHECK_TIMEOUT_S": "1",
    "REDIS_TIMEOUT_S": "2",
    # Warm-model-first routing: a host whose engine lacks a job's model loads it itself once
    # every warm host has stayed busy this long (5 s in production).
    "WARM_ROUTING_WAIT_S": "1",
    "WARM_ROUTING_RETRY_S": "0.2",
}


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout}s")


class GpuHost:
    """A GPU host: its engine (the Ollama double on the host's own loopback) and a worker."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.node = f"gpu0@{host.name}"  # what `python -m workers run --gpu 0` calls itself

    def configure(self, **knobs: Any) -> None:
        from tests.pipeline.conftest import Double

        with self.host.inside():
            Double(11434, process=None).configure(**knobs)  # type: ignore[arg-type]

    def worker_log(self) -> str:
        return self.host.log("worker")


_NUMBERS = itertools.count(1)


class Cluster:
    def __init__(self, broker: Broker | None = None, **settings: str) -> None:
        netns.sweep_stale()
        self.broker = broker or RedisBroker()
        self.extra = settings
        # One run may hold two clusters at once (the session's, and a test's own): each
        # names its namespaces apart, under the run's prefix that the sweep reads.
        self.prefix = f"{netns.run_prefix()}{next(_NUMBERS)}-"
        self.folder = Path(tempfile.mkdtemp(prefix=f"omx-cluster-{os.getpid()}-"))
        self.hosts: list[Host] = []
        self.gpus: list[GpuHost] = []
        self.apis: list[Host] = []
        self.wire = Wire(self.prefix)
        self.data_services: DataHost | None = None

    # --- building -------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def host(self, name: str, number: int) -> Host:
        host = Host(name, number, self.prefix, self.folder)
        self.hosts.append(host)
        self.wire.plug(host)
        return host

    def start(self, api_hosts: int = 2, gpu_hosts: int = 3) -> None:
        if haproxy_binary() is None:
            raise RuntimeError("haproxy is not installed (docker/local-services.sh installs it)")
        self.data = self.host("data", 2)
        self.lb = self.host("lb", 5)
        self.client = ClientHost(self.host("client", 100), f"http://{self.lb.address}:{PROXY_PORT}")
        self.data_services = DataHost(self.data)
        database_url, redis_url = self.data_services.start()
        broker_url = self.broker.start(self.data)
        self.client.database_url, self.client.redis_url = database_url, redis_url
        self.env = self._environment(database_url, redis_url, broker_url)
        self.data.spawn(
            "beat",
            self._python(
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "beat",
                "--schedule",
                str(self.data.folder / "schedule"),
            ),
            self.env,
            cwd=ROOT,
        )
        self.data.spawn(
            "flower",
            self._python(
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "flower",
                f"--address={self.data.address}",
                f"--port={FLOWER_PORT}",
                f"--conf={FLOWER_CONF}",
                "--logging=error",
            ),
            {**self.env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
            cwd=ROOT,
        )
        for index in range(api_hosts):
            self.start_api(self.host(f"api{index + 1}", 11 + index))
        self._start_proxy()
        for _ in range(gpu_hosts):
            self.add_gpu_host()

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def _environment(self, database_url: str, redis_url: str, broker_url: str) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
        env = {key: os.environ[key] for key in keep if key in os.environ}
        env.update(
            APP_ENV="test",
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=broker_url,
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            BCRYPT_ROUNDS="4",
            RATELIMIT_DEFAULT="10000/minute",
            RATELIMIT_LOGIN="10000/minute",
            RATELIMIT_REGISTER="10000/minute",
            METRICS_TOKEN=METRICS_TOKEN,
            QUOTA_MAX_WEBSOCKETS="0",
            PYTHONUNBUFFERED="1",
            **FAST,
        )
        env.update(self.extra)  # the caller's settings win
        return env

    def start_api(self, host: Host) -> None:
        """Start (or start again) gunicorn on an API host; returns once it serves."""
        env = {
            **self.env,
            "API_HOST": host.address,
            "API_PORT": str(API_PORT),
            "WEB_CONCURRENCY": "1",
            "TRUSTED_PROXIES": self.lb.address,
            "PROMETHEUS_MULTIPROC_DIR": str(host.folder / "metrics"),
        }
        shutil.rmtree(host.folder / "metrics", ignore_errors=True)
        argv = self._python("-m", "gunicorn", "-c", "config/gunicorn.py", "wsgi:app")
        process = host.spawn("web", argv, env, cwd=ROOT)
        if host not in self.apis:
            self.apis.append(host)
        url = f"http://{host.address}:{API_PORT}/health"

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"web on {host.name} exited:\n{host.log('web')[-3000:]}")
            return self.client.answers(url)

        wait_for(serving, 60, f"web on {host.name}")

    def _start_proxy(self) -> None:
        backends = {host.name: host.address for host in self.apis}
        config = haproxy_config(self.lb.address, backends, self.lb.folder)
        self.lb.spawn("haproxy", [str(haproxy_binary()), "-db", "-f", str(config)], self.env)
        wait_for(lambda: self.client.answers(f"{self.client.base_url}/health"), 30, "haproxy")

    def add_gpu_host(self, slots: int = 2) -> GpuHost:
        """A GPU host more: its engine, then its worker, as an operator brings one up. Nothing
        else is told: the worker registers its node and consumes its models' queues."""
        number = len(self.gpus) + 1
        gpu = GpuHost(self.host(f"gpu{number}", 20 + number))
        double = self._python(
            "-m", "tests.ollama_double", "--port", "11434", "--models", ",".join(MODELS)
        )
        gpu.host.spawn("double", double, self.env, cwd=ROOT)
        worker = self._python(
            "-m",
            "workers",
            "run",
            "--gpu",
            "0",
            "--slots",
            str(slots),
            "--engine-url",
            "http://127.0.0.1:11434",
            "--wait-engine-s",
            "30",
            "--metrics-port",
            "9100",
        )
        env = {**self.env, "WORKER_METRICS_HOST": "0.0.0.0"}  # noqa: S104
        process = gpu.host.spawn("worker", worker, env, cwd=ROOT)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker on {gpu.host.name} exited:\n{gpu.worker_log()[-3000:]}")
            return "ready." in gpu.worker_log()

        wait_for(ready, 60, f"worker on {gpu.host.name}")
        self.gpus.append(gpu)
        return gpu

    def warm(self, model: str) -> None:
        """Every GPU host's engine holds `model` in memory, and every worker knows it (a
        heartbeat has carried it since): warm routing then runs a job where it lands."""
        for gpu in self.gpus:
            gpu.configure(loaded=[model])
        operator = self.client.login(Role.OPERATOR)

        def ours() -> list[dict[str, Any]]:
            listed = self.client.api.get("/api/v1/nodes", headers=operator).get_json()["items"]
            names = {gpu.node for gpu in self.gpus}
            return [node for node in listed if node["name"] in names]

        def beats() -> dict[str, str] | None:
            nodes = ours()
            if len(nodes) == len(self.gpus) and all(model in n["loaded_models"] for n in nodes):
                return {node["name"]: node["last_heartbeat_at"] for node in nodes}
            return None

        seen = wait_for(beats, 30, f"every node to report {model} loaded")
        # The worker refreshes its router after writing the beat: one beat more settles it.
        wait_for(
            lambda: all(node["last_heartbeat_at"] != seen[node["name"]] for node in ours()),
            30,
            "one more heartbeat from every node",
        )

    # --- ending ---------------------------------------------------------------------

    def close(self) -> None:
        """Processes first (workers hand back, then the web, the proxy), then the data host's
        servers, then every namespace and the run's folder; each step whatever the last did."""
        for host in reversed(self.hosts):
            if host is not getattr(self, "data", None):
                _quietly(host.close)
        if self.data_services is not None:
            _quietly(self.data_services.close)
        _quietly(self.broker.close)
        for host in self.hosts:
            _quietly(host.close)
        _quietly(lambda: netns.delete(self.wire.namespace))
        for namespace in netns.ours():
            if namespace.startswith(self.prefix):
                _quietly(lambda namespace=namespace: netns.delete(namespace))
        if not os.environ.get("CLUSTER_KEEP_LOGS"):
            shutil.rmtree(self.folder, ignore_errors=True)


def _quietly(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception as error:
        print(f"cluster teardown: {error!r}", file=sys.stderr)
