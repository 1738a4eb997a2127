"""The whole system on one machine, in one command (`make run` ends here):

    python -m ops.supervisor

PostgreSQL, Redis and the migrations are `make run`'s first steps. This makes sure an
admin exists (ADMIN_* from the environment, or generated once and kept in STACK_STATE_DIR),
picks the engine (the Ollama at OLLAMA_HOST when it answers, else the embedded llama.cpp
model), and runs under honcho: the web process, one worker per GPU (one CPU worker
without a GPU, or for the embedded model), beat, the webhook deliverer, Flower behind
basic auth, the embedded engine when used, and `first-answer`, which streams a first answer
from the model to the console. Each worker, and the deliverer, runs under `python -m
ops.keepalive`: honcho stops the whole stack when any process ends, so one that fails is
started again there, after a short backoff.
Every process logs in the console format (LOG_FORMAT=console), in colour on a terminal; what
repeats every few seconds shows only at LOG_LEVEL=DEBUG. Ctrl-C stops every process
(SIGTERM, then SIGKILL after STOP_GRACE_S).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import requests
from honcho import manager as honcho_manager
from honcho.manager import Manager

from config.logging import wants_colour
from config.settings import Settings, get_settings
from ops.console import StackPrinter
from ops.credentials import (
    Credentials,
    admin_credentials,
    ensure_admin,
    flower_auth,
    say,
    state_dir,
)
from ops.first_answer import first_answer
from workers import llama_server
from workers.gpu import discover

# Workers finish or hand back their jobs on SIGTERM; gunicorn drains for up to 30 s.
STOP_GRACE_S = 35
# Puts Flower's /metrics behind its basic auth too (Flower 2.2 leaves it open).
FLOWER_CONF = Path(__file__).resolve().parents[1] / "docker" / "flowerconfig.py"
DEFAULT_WORKER_METRICS_PORT = 11561  # the first worker's; each next one takes the next port
WEBHOOK_METRICS_PORT = 11560  # the webhook deliverer's /metrics


@dataclass(frozen=True)
class EngineChoice:
    kind: str  # "ollama" or "openai"
    url: str
    embedded: bool


def choose_engine(settings: Settings) -> EngineChoice:
    url = settings.engine_url or settings.ollama_host
    if settings.engine_kind == "openai" and settings.engine_url:
        return EngineChoice("openai", url, embedded=False)
    try:
        if requests.get(f"{url.rstrip('/')}/api/version", timeout=2).ok:
            say(f"using the Ollama at {url}")
            return EngineChoice("ollama", url, embedded=False)
    except requests.RequestException:
        pass
    port = settings.embedded_engine_port
    say(f"no Ollama at {url}: running the embedded model ({llama_server.MODEL_ALIAS}) on {port}")
    return EngineChoice("openai", f"http://127.0.0.1:{port}", embedded=True)


def _python(*args: str) -> str:
    """A command line for honcho (which runs it through a shell): our interpreter quoted, so a
    checkout path with spaces still works; `args` are ours and need no quoting."""
    return " ".join([shlex.quote(sys.executable), *args])


def process_env(settings: Settings) -> dict[str, str]:
    """Every process listens where the API does (API_HOST), workers' metrics too, and logs
    for people: honcho pipes their output, so colour is asked for when ours is a terminal."""
    env = {**os.environ, "WORKER_METRICS_HOST": settings.api_host, "LOG_FORMAT": "console"}
    if wants_colour(sys.stdout):
        env["FORCE_COLOR"] = "1"
    return env


def build(
    settings: Settings, engine: EngineChoice, auth: str, state: Path, printer: StackPrinter
) -> Manager:
    env = process_env(settings)
    manager = Manager(printer)
    manager.add_process("web", _python("-m gunicorn -c config/gunicorn.py wsgi:app"), env=env)
    _add_beat_and_flower(manager, settings, auth, state, env)
    # Its own process (docs/webhooks.md): a slow receiver never holds a worker's slot.
    manager.add_process(
        "webhooks",
        _keepalive("webhooks", "-m web.webhooks", f"--metrics-port {WEBHOOK_METRICS_PORT}"),
        env=env,
    )
    if engine.embedded:
        # Through its own entry point, which also writes the model out on first use and keeps
        # WEB_CONCURRENCY (ours) away from the server's uvicorn.
        port = settings.embedded_engine_port
        manager.add_process("engine", _python("-m workers.llama_server", f"--port {port}"), env=env)
    _add_workers(manager, settings, engine, env)
    if engine.embedded:
        _add_embedding_engine(manager, settings, env)
    # The embedded engine serves one known model; with Ollama, the first the fleet offers.
    model = f" --model {llama_server.MODEL_ALIAS}" if engine.embedded else ""
    manager.add_process("first-answer", _python(f"-m ops.supervisor first-answer{model}"), env=env)
    return manager


def _add_beat_and_flower(
    manager: Manager, settings: Settings, auth: str, state: Path, env: dict[str, str]
) -> None:
    # Celery's own logging, not ours: beat says "Sending due task" at INFO for every sweep
    # and Flower warns while the workers start; both speak up at DEBUG.
    debug = settings.log_level == "DEBUG"
    manager.add_process(
        "beat",
        _python(
            "-m celery -A workers.celery_app beat --schedule",
            shlex.quote(str(state / "celerybeat-schedule")),
            f"--loglevel {'DEBUG' if debug else 'WARNING'}",
        ),
        env=env,
    )
    manager.add_process(
        "flower",
        _python(
            f"-m celery -A workers.celery_app flower --port={settings.flower_port} "
            f"--address={settings.api_host} --purge_offline_workers=60 "
            f"--logging={'debug' if debug else 'error'} --conf={shlex.quote(str(FLOWER_CONF))}"
        ),
        # Flower reads FLOWER_BASIC_AUTH itself; in the environment it stays out of `ps`.
        env={**env, "FLOWER_BASIC_AUTH": auth},
    )


def _add_workers(
    manager: Manager, settings: Settings, engine: EngineChoice, env: dict[str, str]
) -> None:
    gpus = [] if engine.embedded else discover()
    first_metrics_port = settings.worker_metrics_port or DEFAULT_WORKER_METRICS_PORT
    pins: list[int | None] = [gpu.index for gpu in gpus] or [None]
    for number, gpu in enumerate(pins):
        name = f"gpu{gpu}" if gpu is not None else "cpu"
        args = [
            "-m workers run",
            f"--engine {engine.kind}",
            f"--engine-url {engine.url}",
            f"--name {name}@{socket.gethostname()}",
            f"--metrics-port {first_metrics_port + number}",
            "--wait-engine-s 300",
        ]
        if gpu is not None:
            args.append(f"--gpu {gpu}")
        if engine.embedded:
            args.append("--capabilities completion")
        manager.add_process(f"worker.{name}", _keepalive(f"worker.{name}", *args), env=env)


def _add_embedding_engine(manager: Manager, settings: Settings, env: dict[str, str]) -> None:
    """Embeddings too, so that `ollama.embed` and OpenAI's embeddings answer out of the box: the
    small embedding model (all-MiniLM-L6-v2) behind a worker of its own (a node serving that
    one model, as a second host would)."""
    port = settings.embedded_embedding_port
    manager.add_process(
        "embed-engine", _python("-m workers.llama_server --embedding", f"--port {port}"), env=env
    )
    metrics_port = (settings.worker_metrics_port or DEFAULT_WORKER_METRICS_PORT) + 1
    args = [
        "-m workers run",
        "--engine openai",
        f"--engine-url http://127.0.0.1:{port}",
        f"--name embed@{socket.gethostname()}",
        f"--metrics-port {metrics_port}",
        "--capabilities embedding",  # what the doors' /api/show say, and the smoke test reads
        "--slots 1",  # llama-cpp-python's server answers one request at a time
        "--wait-engine-s 300",
    ]
    manager.add_process("worker.embed", _keepalive("worker.embed", *args), env=env)


def _keepalive(name: str, *args: str) -> str:
    """`_python(*args)`, started again by ops/keepalive.py whenever it fails."""
    return _python(f"-m ops.keepalive --name {name} --", shlex.quote(sys.executable), *args)


def banner_lines(
    settings: Settings, credentials: Credentials, auth: str, auth_is_new: bool
) -> list[str]:
    """Where everything is, and the credentials generated on this run (shown on it only)."""
    api = f"http://{settings.api_host}:{settings.api_port}"
    user, _, password = auth.partition(":")
    flower_login = f"{user} / " + (password if auth_is_new else "(as set before)")
    lines = [
        f"API        {api}   (docs {api}/docs, metrics {api}/metrics)",
        f"Flower     http://{settings.api_host}:{settings.flower_port}   ({flower_login})",
        f"Admin      {credentials.email} / "
        + (credentials.password if credentials.generated else "(as set before)"),
    ]
    if credentials.generated:
        lines.append("           (generated now and shown once; kept in STACK_STATE_DIR)")
    lines.append(f"Ollama     OLLAMA_HOST={api} OLLAMA_API_KEY=<an API key> your-script.py")
    lines.append(f"OpenAI     OpenAI(base_url='{api}/v1', api_key=<an API key>)")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.supervisor", description=__doc__)
    parser.add_argument("command", nargs="?", default="up", choices=["up", "first-answer"])
    parser.add_argument("--model", default=None, help="first-answer: the model to ask")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "first-answer":
        first_answer(settings, args.model)
        return
    state = state_dir(settings)
    credentials = admin_credentials(settings, state)
    ensure_admin(credentials)
    auth, auth_is_new = flower_auth(settings, state)
    engine = choose_engine(settings)
    printer = StackPrinter(sys.stdout, banner_lines(settings, credentials, auth, auth_is_new))
    manager = build(settings, engine, auth, state, printer)
    printer.show_banner("OllamaMax is starting; a first answer follows")
    honcho_manager.KILL_WAIT = STOP_GRACE_S  # honcho's own knob: its default is 5 s
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
