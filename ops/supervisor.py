"""The whole system on one machine, in one command (`make run` ends here):

    python -m ops.supervisor

PostgreSQL, Redis and the migrations are `make run`'s first steps. This makes sure an
admin exists (ADMIN_* from the environment, or generated once and kept in STACK_STATE_DIR),
picks the engine (the Ollama at OLLAMA_HOST when it answers, else the embedded llama.cpp
model), and runs under honcho: the web process, one worker per GPU (one CPU worker
without a GPU, or for the embedded model), beat, Flower behind basic auth, the embedded
engine when used, and `first-answer`, which streams a first answer from the model to the
console. Ctrl-C stops every process (SIGTERM, then SIGKILL after STOP_GRACE_S).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from honcho import manager as honcho_manager
from honcho.manager import Manager
from honcho.printer import Printer
from websocket import WebSocketException, create_connection

from config.settings import Settings, get_settings
from workers import llama_server
from workers.gpu import discover

ROOT = Path(__file__).resolve().parent.parent
# Workers finish or hand back their jobs on SIGTERM; gunicorn drains for up to 30 s.
STOP_GRACE_S = 35
DEFAULT_WORKER_METRICS_PORT = 11561  # the first worker's; each next one takes the next port
PROMPT = "Once upon a time, in a valley between two mountains,"


@dataclass(frozen=True)
class Credentials:
    username: str
    email: str
    password: str
    generated: bool  # True on the run that created them: the only time they are printed


@dataclass(frozen=True)
class EngineChoice:
    kind: str  # "ollama" or "openai"
    url: str
    embedded: bool


def _say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def _state_dir(settings: Settings) -> Path:
    folder = Path(settings.stack_state_dir)
    folder = folder if folder.is_absolute() else ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def _secret_file(path: Path, make: str) -> tuple[str, bool]:
    """The value kept in `path`, or `make` written there (owner-only) on first use."""
    if path.exists():
        return path.read_text().strip(), False
    path.touch(mode=0o600)
    path.write_text(make + "\n")
    return make, True


def admin_credentials(settings: Settings, state: Path) -> Credentials:
    username = settings.admin_username or "admin"
    email = settings.admin_email or "admin@example.com"
    if settings.admin_password:
        return Credentials(username, email, settings.admin_password, generated=False)
    password, generated = _secret_file(state / "admin-password", secrets.token_urlsafe(18))
    return Credentials(username, email, password, generated)


def ensure_admin(credentials: Credentials) -> None:
    done = subprocess.run(  # noqa: S603 - our own CLI, arguments from our settings
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "create-admin",
            "--username",
            credentials.username,
            "--email",
            credentials.email,
            "--password-stdin",
            "--exists-ok",
        ],
        input=credentials.password + "\n",
        text=True,
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"[stack] could not create the admin: {done.stderr or done.stdout}")
    _say(done.stdout.strip())


def flower_auth(settings: Settings, state: Path) -> tuple[str, bool]:
    """Flower's `user:password`, and whether it was generated on this run (then shown)."""
    if settings.flower_basic_auth:
        return settings.flower_basic_auth.get_secret_value(), False
    password, generated = _secret_file(state / "flower-password", secrets.token_urlsafe(18))
    return f"operator:{password}", generated


def choose_engine(settings: Settings) -> EngineChoice:
    url = settings.engine_url or settings.ollama_host
    if settings.engine_kind == "openai" and settings.engine_url:
        return EngineChoice("openai", url, embedded=False)
    try:
        if requests.get(f"{url.rstrip('/')}/api/version", timeout=2).ok:
            _say(f"using the Ollama at {url}")
            return EngineChoice("ollama", url, embedded=False)
    except requests.RequestException:
        pass
    port = settings.embedded_engine_port
    _say(f"no Ollama at {url}: running the embedded model ({llama_server.MODEL_ALIAS}) on {port}")
    return EngineChoice("openai", f"http://127.0.0.1:{port}", embedded=True)


def _python(*args: str) -> str:
    """A command line for honcho (which runs it through a shell): our interpreter quoted, so a
    checkout path with spaces still works; `args` are ours and need no quoting."""
    return " ".join([shlex.quote(sys.executable), *args])


def build(settings: Settings, engine: EngineChoice, auth: str, state: Path) -> Manager:
    manager = Manager(Printer(sys.stdout))
    # Every process listens where the API does (API_HOST): workers' metrics too.
    env = {**os.environ, "WORKER_METRICS_HOST": settings.api_host}
    manager.add_process("web", _python("-m gunicorn -c config/gunicorn.py wsgi:app"), env=env)
    manager.add_process(
        "beat",
        _python(
            "-m celery -A workers.celery_app beat --schedule",
            shlex.quote(str(state / "celerybeat-schedule")),
        ),
        env=env,
    )
    manager.add_process(
        "flower",
        _python(
            f"-m celery -A workers.celery_app flower --port={settings.flower_port} "
            f"--address={settings.api_host} --purge_offline_workers=60"
        ),
        # Flower reads FLOWER_BASIC_AUTH itself; in the environment it stays out of `ps`.
        env={**env, "FLOWER_BASIC_AUTH": auth},
    )
    if engine.embedded:
        # Through its own entry point, which also writes the model out on first use and keeps
        # WEB_CONCURRENCY (ours) away from the server's uvicorn.
        port = settings.embedded_engine_port
        manager.add_process("engine", _python("-m workers.llama_server", f"--port {port}"), env=env)
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
        manager.add_process(f"worker.{name}", _python(*args), env=env)
    # The embedded engine serves one known model; with Ollama, the first the fleet offers.
    model = f" --model {llama_server.MODEL_ALIAS}" if engine.embedded else ""
    manager.add_process("first-answer", _python(f"-m ops.supervisor first-answer{model}"), env=env)
    return manager


def banner(settings: Settings, credentials: Credentials, auth: str, auth_is_new: bool) -> None:
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
    width = max(len(line) for line in lines)
    print("=" * width, *lines, "=" * width, sep="\n", flush=True)


def first_answer(settings: Settings, model: str | None) -> None:
    """Stream one answer to the console, then stay: honcho stops everything when any process
    ends, and a demo that could not run is no reason to stop the system."""
    try:
        _stream_first_answer(settings, model)
    except (GiveUp, WebSocketException, requests.RequestException, OSError, KeyError) as error:
        _say(f"no first answer: {error}")
    _say("the stack is up; Ctrl-C stops it")
    while True:
        time.sleep(3600)


class GiveUp(Exception):
    pass


def _stream_first_answer(settings: Settings, model: str | None) -> None:
    """Log in as the admin, wait for a model, submit a job and print its token events."""
    state = _state_dir(settings)
    credentials = admin_credentials(settings, state)
    api = f"http://{settings.api_host}:{settings.api_port}"
    session = requests.Session()
    token = _wait(lambda: _login(session, api, credentials), "the API", 120)
    session.headers["Authorization"] = f"Bearer {token}"
    model = model or _wait(lambda: _a_model(session, api), "a model on a node", 600)
    # Accepted once a node serves the model (409 until its worker has registered it).
    submitted = json.loads(
        _wait(lambda: _submit(session, api, model), f"a node serving {model}", 600)
    )
    _say(f"first answer from {model} (request {submitted['id']}):")
    ws_url = api.replace("http", "ws", 1) + submitted["links"]["ws"] + f"?token={token}"
    ws = create_connection(ws_url, timeout=120)
    started = time.monotonic()
    print(PROMPT, end="", flush=True)
    tokens = 0
    while True:
        frame = ws.recv()
        if not frame:
            break
        event = json.loads(frame)
        if event.get("type") == "token":
            tokens += 1
            print(event["text"], end="", flush=True)
        elif event.get("type") == "status" and event.get("status") not in ("queued", "running"):
            print(flush=True)
            _say(f"{event['status']}: {tokens} token events in {time.monotonic() - started:.1f} s")
            break
    ws.close()


def _wait(attempt: object, what: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = attempt()  # type: ignore[operator]
        except requests.RequestException:
            value = None
        if value:
            return str(value)
        time.sleep(1)
    raise GiveUp(f"gave up waiting for {what} after {timeout_s:g} s")


def _login(session: requests.Session, api: str, credentials: Credentials) -> str | None:
    response = session.post(
        f"{api}/api/v1/auth/login",
        json={"username": credentials.email, "password": credentials.password},
        timeout=5,
    )
    return str(response.json()["access_token"]) if response.ok else None


def _submit(session: requests.Session, api: str, model: str) -> str | None:
    response = session.post(
        f"{api}/api/v1/inference/generate",
        json={"model": model, "prompt": PROMPT, "options": {"num_predict": 48}},
        timeout=10,
    )
    return response.text if response.status_code == 202 else None


def _a_model(session: requests.Session, api: str) -> str | None:
    response = session.get(f"{api}/api/tags", timeout=5)
    models = [m["name"] for m in response.json().get("models", [])] if response.ok else []
    return models[0] if models else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.supervisor", description=__doc__)
    parser.add_argument("command", nargs="?", default="up", choices=["up", "first-answer"])
    parser.add_argument("--model", default=None, help="first-answer: the model to ask")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "first-answer":
        first_answer(settings, args.model)
        return
    state = _state_dir(settings)
    credentials = admin_credentials(settings, state)
    ensure_admin(credentials)
    auth, auth_is_new = flower_auth(settings, state)
    engine = choose_engine(settings)
    manager = build(settings, engine, auth, state)
    banner(settings, credentials, auth, auth_is_new)
    honcho_manager.KILL_WAIT = STOP_GRACE_S  # honcho's own knob: its default is 5 s
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
