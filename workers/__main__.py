"""One GPU-pinned worker in one command:

    python -m workers run --gpu 0 --engine-url http://127.0.0.1:11434 --slots 4
    python -m workers run --engine openai --engine-url http://127.0.0.1:8000 --slots 2

It pins CUDA_VISIBLE_DEVICES, registers its node (host, GPU from NVML, engine, slots) and
the engine's models, then runs a Celery worker with a pool of `--slots` threads named
`gpu<N>@<host>` that consumes `model.<name>` for every model the engine has, its own
`node.<name>` queue and `default` (sweeps). `--slots` should equal the engine's
OLLAMA_NUM_PARALLEL (or the OpenAI-compatible server's parallel sequences). Without --gpu it
is a CPU node.

The process exits 0 when it was asked to stop (SIGTERM, a remote shutdown, a decommission)
and non-zero when it failed, Celery's "Unrecoverable error" included (a broker that answers
its consumer with an error), so that its supervisor restarts it (ops/keepalive.py under
`make run`, `restart:` in compose). Whatever stops it, running jobs get SHUTDOWN_GRACE_S and
are then handed back, so a failed worker does not wait out its jobs.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from typing import Any

from celery import bootsteps
from celery.signals import worker_init, worker_ready, worker_shutting_down

from config.logging import configure_logging
from config.settings import get_settings
from db.fleet import NodeReport
from db.models import EngineKind
from db.session import Database
from workers import metrics, runtime
from workers.celery_app import create_celery_app
from workers.dispatch import queue_for_node
from workers.engines import make_engine
from workers.engines.base import Engine, EngineError
from workers.events import EventLog, worker_redis
from workers.node import Heartbeat, go_offline, register
from workers.runtime_config import RuntimeConfigSource

log = logging.getLogger("workers")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a worker for one engine (one GPU)")
    run.add_argument("--gpu", type=int, default=None, help="GPU index (NVML); none = CPU node")
    run.add_argument("--engine-url", default=None, help="default: ENGINE_URL, else OLLAMA_HOST")
    run.add_argument(
        "--engine",
        choices=[kind.value for kind in EngineKind],
        default=None,
        help="ollama, or openai for an OpenAI-compatible server; default: ENGINE_KIND",
    )
    run.add_argument(
        "--capabilities",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=[],
        help="openai engines: what its models can do, comma-separated (completion, embedding, "
        "tools, vision...), shown by the doors' /api/show; Ollama says it itself",
    )
    run.add_argument("--slots", type=int, default=1, help="concurrent jobs (OLLAMA_NUM_PARALLEL)")
    run.add_argument("--name", default=None, help="node name; default gpu<N>@<host> or cpu@<host>")
    run.add_argument(
        "--metrics-port", type=int, default=None, help="serve /metrics; default WORKER_METRICS_PORT"
    )
    run.add_argument(
        "--wait-engine-s",
        type=float,
        default=0,
        help="wait this long for the engine to list its models before registering",
    )
    return parser.parse_args(argv)


class HandBackWhenStopping(bootsteps.StartStopStep):  # type: ignore[misc]
    """Starts the grace period however the worker stops. Celery closes every step before
    it stops the pool, and the pool waits for the running jobs: a SIGTERM starts the grace
    earlier (worker_shutting_down), but a consumer that failed or a remote shutdown send
    no signal, and their jobs would run to their end (MAX_GENERATION_S) in a process that
    can no longer acknowledge them."""

    requires = ("celery.worker.components:Pool",)

    def close(self, parent: Any) -> None:
        runtime.current().begin_stopping()


def exit_status(worker: Any) -> int:
    """The status for the process. `worker_main` drops the worker's own: Celery sets 1
    (EX_FAILURE) on an unrecoverable error, 0 on a warm shutdown (SIGTERM, a remote
    shutdown), and nothing on a cold one (asked for too)."""
    if worker is None:
        return 1  # never built: the command line or the app failed
    code = worker.exitcode
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_levels)
    if args.gpu is not None:
        # For anything this process runs itself; the engine is pinned by its own environment.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    hostname = socket.gethostname()
    name = args.name or (f"gpu{args.gpu}@{hostname}" if args.gpu is not None else f"cpu@{hostname}")
    engine_kind = args.engine or settings.engine_kind
    engine_url = args.engine_url or settings.engine_url or settings.ollama_host
    # Celery calls a worker "celery@<name>" when the name has no "@"; control commands
    # (add_consumer, shutdown) are addressed by that full name.
    celery_hostname = name if "@" in name else f"celery@{name}"
    # A connection per slot, plus the watcher, the heartbeat and a sweep: never opened and
    # closed per job.
    database = Database.from_settings(settings, pool_size=args.slots + 3)
    celery_app = create_celery_app(settings)
    celery_app.set_default()  # the app our @shared_task tasks run under
    redis = worker_redis(settings.redis_url, settings.redis_timeout_s)
    rt = runtime.Runtime(
        settings=settings,
        database=database,
        celery=celery_app,
        redis=redis,
        events=EventLog(redis, ttl_s=settings.event_ttl_s),
        # The cache's Redis, where the web process invalidates what it changes.
        runtime_config=RuntimeConfigSource(
            settings,
            database,
            worker_redis(settings.cache_url, settings.redis_timeout_s),
        ),
        engine=make_engine(
            engine_kind,
            engine_url,
            settings,
            capabilities=args.capabilities,
            connections=args.slots + 2,  # the slots' streams, a pull and a probe
        ),
        worker_name=celery_hostname,
        node_name=name,
        engine_url=engine_url,
        gpu_index=args.gpu,
        slots=args.slots,
    )
    if args.wait_engine_s:
        wait_for_engine(rt.engine, args.wait_engine_s)
    model_queues = register(
        rt,
        NodeReport(
            name=name,
            hostname=hostname,
            gpu_index=args.gpu,
            engine_kind=engine_kind,
            engine_url=engine_url,
            slots=args.slots,
            worker_name=celery_hostname,
        ),
    )
    runtime.install(rt)
    queues = ["default", queue_for_node(name), *sorted(model_queues)]
    log.info("node %s consumes %s", name, ", ".join(queues))
    heartbeat = Heartbeat(rt, celery_app, set(model_queues))

    workers: list[Any] = []

    @worker_init.connect
    def remember_worker(sender: object, **_: object) -> None:
        workers.append(sender)  # its exit code, read once worker_main returns

    @worker_ready.connect
    def remember_consumer(sender: object, **_: object) -> None:
        heartbeat.consumer = sender  # how the heartbeat applies slot changes

    @worker_shutting_down.connect
    def stop_taking_time(**_: object) -> None:
        # Celery's warm shutdown waits for running tasks: give them SHUTDOWN_GRACE_S to
        # finish, then they hand their jobs back (workers/tasks/inference.py).
        log.info("stopping: running jobs have %g s to finish", settings.shutdown_grace_s)
        rt.begin_stopping()

    celery_app.steps["worker"].add(HandBackWhenStopping)
    heartbeat.start()
    metrics_port = args.metrics_port or settings.worker_metrics_port
    if metrics_port:
        metrics.serve(metrics_port, settings.worker_metrics_host)
        log.info("metrics on %s:%d/metrics", settings.worker_metrics_host, metrics_port)
    try:
        celery_app.worker_main(
            [
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(args.slots),
                "--queues",
                ",".join(queues),
                "--hostname",
                celery_hostname,
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                settings.log_level,
            ]
        )
    finally:
        heartbeat.stop.set()
        rt.watcher.stop()
        go_offline(rt, reason="worker stopped")
    code = exit_status(workers[-1] if workers else None)
    if code:
        log.error("worker %s failed (exit status %d); its supervisor restarts it", name, code)
    sys.exit(code)


def wait_for_engine(engine: Engine, timeout_s: float) -> None:
    """An engine started beside its worker (the embedded model, a compose pair) may still be
    loading: registering now would find no models and consume no model queue."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if engine.models():
                return
        except EngineError as error:
            log.info("waiting for the engine: %s", error)
        time.sleep(1)
    # Still nothing: register anyway; the node shows degraded until the engine answers.


if __name__ == "__main__":
    main()
