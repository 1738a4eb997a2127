"""The one-command stack (`make run` -> `python -m ops.supervisor`) as a new user meets it: no
Ollama anywhere, so the embedded model; an admin generated and shown once; a first streamed
answer; Flower behind auth; and Ctrl-C stopping every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ollama
import pytest
import requests
from sqlalchemy import text

from db.session import Database
from tests.conftest import REQUEST_TABLES, ROOT, free_port, free_ports_in_a_row
from tests.pipeline.conftest import wait_for


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    log_path: Path
    state: Path
    api: str
    flower: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def stack(
    pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("stack")
    api_port, flower_port = free_port(), free_port()
    env = {
        **pipeline_env,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(api_port),
        "FLOWER_PORT": str(flower_port),
        "EMBEDDED_ENGINE_PORT": str(free_port()),
        "EMBEDDED_EMBEDDING_PORT": str(free_port()),
        # The CPU worker's metrics on this port, the embedding worker's on the next.
        "WORKER_METRICS_PORT": str(free_ports_in_a_row(2)),
        "OLLAMA_HOST": f"http://127.0.0.1:{free_port()}",  # nothing answers there
        "STACK_STATE_DIR": str(folder / "state"),
        "WEB_CONCURRENCY": "1",
        "LOG_FORMAT": "console",
        "ENGINE_STALL_TIMEOUT_S": "60",  # a real model on a busy machine, not the double
    }
    for name in ("ADMIN_USERNAME", "ADMIN_EMAIL", "ADMIN_PASSWORD", "FLOWER_BASIC_AUTH"):
        env.pop(name, None)
    log_path = folder / "stack.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "ops.supervisor"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we can find every child
        )
    running = Stack(
        process,
        log_path,
        folder / "state",
        f"http://127.0.0.1:{api_port}",
        f"http://127.0.0.1:{flower_port}",
    )
    try:
        wait_for(
            lambda: "the stack is up" in running.log() or process.poll() is not None,
            timeout=240,
            interval=0.5,
        )
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"the stack did not come up:\n{running.log()[-6000:]}") from None
    yield running
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module", autouse=True)
def _clean_database(database: Database) -> Iterator[None]:
    yield  # the stack wrote its admin, node and model for real
    tables = ", ".join((*REQUEST_TABLES, "nodes", "models"))
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} CASCADE"))


def _admin_headers(stack: Stack) -> dict[str, str]:
    password = (stack.state / "admin-password").read_text().strip()
    login = requests.post(
        f"{stack.api}/api/v1/auth/login",
        json={"username": "admin", "password": password},
        timeout=10,
    )
    assert login.ok, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def test_it_comes_up_with_an_admin_and_streams_a_first_answer(stack: Stack) -> None:
    log = stack.log()
    assert stack.process.poll() is None, log[-4000:]
    assert "running the embedded model (gemma3-270m)" in log
    password = (stack.state / "admin-password").read_text().strip()
    assert f"admin@example.com / {password}" in log  # shown once, on creation
    assert re.search(r"completed: \d+ token events", log), log[-4000:]
    assert requests.get(f"{stack.api}/health", timeout=5).ok

    headers = _admin_headers(stack)
    jobs = requests.get(f"{stack.api}/api/v1/inference/requests", headers=headers, timeout=10)
    [first] = jobs.json()["items"]
    assert first["status"] == "completed"
    assert first["model"] == "gemma3-270m:latest"
    assert first["eval_count"] == 48


def test_it_serves_embeddings_out_of_the_box(stack: Stack) -> None:
    """A second engine (all-MiniLM-L6-v2) behind a worker of its own: the official client's
    embed answers, and /api/show says which model embeds and which completes."""
    client = ollama.Client(host=stack.api, headers=_admin_headers(stack))
    wait_for(
        lambda: "all-minilm" in {m.model.split(":")[0] for m in client.list().models if m.model}
    )
    vectors = client.embed(model="all-minilm", input=["The sky is blue", "Grass is green"])
    assert [len(vector) for vector in vectors.embeddings] == [384, 384]
    assert client.show("all-minilm").capabilities == ["embedding"]
    assert client.show("gemma3-270m").capabilities == ["completion"]


def test_the_console_ends_on_the_first_answer_and_the_banner_without_sweeps(stack: Stack) -> None:
    log = stack.log()
    answer = log.index("completed:")
    assert "OllamaMax is up" in log[answer:]  # the banner again, under the first answer
    assert "Task sweep." not in log  # Celery's line per task waits for LOG_LEVEL=DEBUG
    assert "\033[" not in log  # not a terminal: no colour


def test_flower_runs_behind_basic_auth(stack: Stack) -> None:
    assert requests.get(stack.flower, timeout=10).status_code == 401
    password = (stack.state / "flower-password").read_text().strip()
    shown = requests.get(f"{stack.flower}/workers", auth=("operator", password), timeout=10)
    assert shown.status_code == 200


def test_flower_lists_the_jobs_it_watched(stack: Stack) -> None:
    """Workers send Celery's task events only once a monitor asks (workers/celery_app.py):
    Flower asks every few seconds, so a job run while it watches is in its task view. Jobs
    are submitted until one shows whole: one that ran before Flower's first ask is missing,
    and one received before it shows without its name (it is in `task-received` alone)."""
    flower = ("operator", (stack.state / "flower-password").read_text().strip())
    headers = _admin_headers(stack)

    def task_in_flower(task_id: str) -> dict[str, Any] | None:
        shown = requests.get(f"{stack.flower}/api/task/info/{task_id}", auth=flower, timeout=10)
        return shown.json() if shown.ok and shown.json().get("state") == "SUCCESS" else None

    for _ in range(4):
        submitted = requests.post(
            f"{stack.api}/api/v1/inference/generate",
            json={"model": "gemma3-270m", "prompt": "Hi", "options": {"num_predict": 2}},
            headers=headers,
            timeout=10,
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        try:
            task = wait_for(partial(task_in_flower, job_id), timeout=15, interval=0.5)
        except TimeoutError:
            continue
        if task.get("name") is None:  # received before the ask: seen from its start on
            continue
        assert task["name"] == "inference.run"
        return
    raise AssertionError("no job of this test reached Flower's task view whole")


def test_metrics_answer(stack: Stack) -> None:
    body = requests.get(f"{stack.api}/metrics", timeout=10).text
    assert "ollamamax_node_up" in body


def test_ctrl_c_stops_every_process(stack: Stack) -> None:
    stack.process.send_signal(signal.SIGINT)
    stack.process.wait(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(stack.process.pid, 0)  # anything left in its process group?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    survivors = subprocess.run(
        ["ps", "-o", "pid,cmd", "-g", str(stack.process.pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    raise AssertionError(f"processes outlived the stack:\n{survivors}")
