"""`first-answer`, the stack's last process: log in as the admin, wait for a model, stream
one answer to the console, then stay (honcho stops everything when any process ends)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import requests
from websocket import WebSocketException, create_connection

from config.settings import Settings
from ops.credentials import Credentials, admin_credentials, say, state_dir

PROMPT = "Once upon a time, in a valley between two mountains,"
UP = "the stack is up; Ctrl-C stops it"  # the line after which the supervisor shows its banner


class GiveUp(Exception):
    pass


def first_answer(settings: Settings, model: str | None) -> None:
    """Stream one answer, then idle: a demo that could not run is no reason to stop the
    system."""
    try:
        _stream_first_answer(settings, model)
    except (GiveUp, WebSocketException, requests.RequestException, OSError, KeyError) as error:
        say(f"no first answer: {error}")
    say(UP)
    while True:
        time.sleep(3600)


def _stream_first_answer(settings: Settings, model: str | None) -> None:
    """Log in as the admin, wait for a model, submit a job and print its token events."""
    credentials = admin_credentials(settings, state_dir(settings))
    api = f"http://{settings.api_host}:{settings.api_port}"
    session = requests.Session()
    token = _wait(lambda: _login(session, api, credentials), "the API", 120)
    session.headers["Authorization"] = f"Bearer {token}"
    model = model or _wait(lambda: _a_model(session, api), "a model on a node", 600)
    # Accepted once a node serves the model (409 until its worker has registered it).
    submitted = json.loads(
        _wait(lambda: _submit(session, api, model), f"a node serving {model}", 600)
    )
    say(f"first answer from {model} (request {submitted['id']}):")
    ws_url = api.replace("http", "ws", 1) + submitted["links"]["ws"] + f"?token={token}"
    _print_tokens(ws_url)


def _print_tokens(ws_url: str) -> None:
    ws = create_connection(ws_url, timeout=120)
    started = time.monotonic()
    print(PROMPT, end="", flush=True)
    tokens = 0
    while frame := ws.recv():
        event = json.loads(frame)
        if event.get("type") == "token":
            tokens += 1
            print(event["text"], end="", flush=True)
        elif event.get("type") == "status" and event.get("status") not in ("queued", "running"):
            print(flush=True)
            say(f"{event['status']}: {tokens} token events in {time.monotonic() - started:.1f} s")
            break
    ws.close()


def _wait(attempt: Callable[[], str | None], what: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = attempt()
        except requests.RequestException:
            value = None
        if value:
            return value
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
