"""A real model end to end: llama.cpp's OpenAI-compatible server on Gemma 3 270M (CPU), a
worker with the `openai` engine in front of it, and both official clients through our API.

It is a small base model: chat output is not coherent and wording is not stable, so these
tests assert flow, counts and stored metrics, never text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import ollama
import openai
import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import select

from db.base import utcnow
from db.models import Node
from db.session import Database
from tests.conftest import LiveServer
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Worker, wait_for
from tests.pipeline.jobs import finished, submit
from tests.support.llama import LlamaServer, llama_server
from tests.support.ws import connect, read_until_closed, token_of
from workers.llama_server import MODEL_ALIAS

MODEL = f"{MODEL_ALIAS}:latest"


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with llama_server(tmp_path_factory.mktemp("llama"), "--threads", "2") as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def worker(llama: LlamaServer, start_worker: Callable[..., Worker]) -> Worker:
    # A real model on a busy 2-core machine can think for seconds before its first token: the
    # pipeline tests' 2 s stall limit (made for the double) would call that a fault.
    return start_worker(
        llama.url,
        name="llama@test",
        slots=1,
        env={
            "ENGINE_KIND": "openai",
            "ENGINE_STALL_TIMEOUT_S": "60",
            "ENGINE_PROBE_TIMEOUT_S": "1",  # a listing slower than this: the engine is busy
        },
    )


@pytest.fixture
def key(api: FlaskClient, user_headers: dict[str, str]) -> str:
    created = api.post(
        "/api/v1/users/api-keys",
        json={"name": "real", "scopes": ["inference"], "current_password": TEST_PASSWORD},
        headers=user_headers,
    )
    return str(created.get_json()["key"])


def test_a_generate_job_runs_through_the_whole_pipeline(
    api: FlaskClient, user_headers: dict[str, str], live_server: LiveServer
) -> None:
    job = submit(
        api, user_headers, model=MODEL_ALIAS, prompt="The sky is", options={"num_predict": 16}
    )
    ws = connect(live_server.url, job["links"]["ws"], token_of(user_headers), timeout=60)
    received = read_until_closed(ws)
    stored = finished(api, user_headers, job["id"], timeout=60)

    assert stored["status"] == "completed", stored
    assert stored["eval_count"] == 16 or stored["done_reason"] == "length"
    assert received.of_type("token"), "token events came over the WebSocket"
    assert received.text == stored["output"]
    assert [f["status"] for f in received.of_type("status")][-1] == "completed"
    for duration in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert stored[duration] > 0, duration
    assert stored["total_duration"] >= stored["eval_duration"]
    assert stored["first_token_at"] is not None
    assert received.of_type("done")[0]["eval_count"] == stored["eval_count"]
    # llama.cpp's server streams no usage: the prompt is counted by its tokenizer.
    assert stored["prompt_eval_count"] == 4  # "The sky is": <bos>, "The", " sky", " is"


def test_the_official_ollama_client_works_unchanged(key: str, live_server: LiveServer) -> None:
    client = ollama.Client(host=live_server.url, headers={"Authorization": f"Bearer {key}"})
    assert MODEL in [m.model for m in client.list().models]
    whole = client.generate(
        model=MODEL_ALIAS, prompt="Once upon a time", options={"num_predict": 8}
    )
    assert whole.done
    assert whole.eval_count == 8
    assert whole.done_reason == "length"
    parts = list(
        client.generate(
            model=MODEL_ALIAS, prompt="Once upon a time", options={"num_predict": 8}, stream=True
        )
    )
    assert parts[-1].done
    assert parts[-1].eval_count == 8
    assert sum(1 for p in parts if p.response) >= 1
    chat = client.chat(
        model=MODEL_ALIAS,
        messages=[{"role": "user", "content": "Say hello."}],
        options={"num_predict": 8},
    )
    assert chat.done
    assert chat.message.role == "assistant"
    assert chat.message.content  # the chat format makes a base model answer (llama_server.py)
    streamed = list(
        client.chat(
            model=MODEL_ALIAS,
            messages=[{"role": "user", "content": "Say hello."}],
            options={"num_predict": 8},
            stream=True,
        )
    )
    assert streamed[-1].done
    assert streamed[-1].done_reason in ("stop", "length")
    assert MODEL in [m.model for m in client.ps().models]
    assert client.show(MODEL_ALIAS).details is not None


def test_the_official_openai_client_works_unchanged(key: str, live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0)
    assert MODEL in [m.id for m in client.models.list()]
    completion = client.completions.create(model=MODEL_ALIAS, prompt="The sky is", max_tokens=8)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert completion.usage.prompt_tokens > 0
    assert completion.choices[0].finish_reason == "length"
    streamed = list(
        client.completions.create(model=MODEL_ALIAS, prompt="The sky is", max_tokens=8, stream=True)
    )
    assert streamed[-1].choices[0].finish_reason == "length"
    messages = [{"role": "user", "content": "Say hello."}]
    chat = client.chat.completions.create(model=MODEL_ALIAS, messages=messages, max_tokens=8)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ALIAS, messages=messages, max_tokens=8, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_node_whose_engine_is_busy_with_a_long_generation_stays_online(
    llama: LlamaServer, worker: Worker, committed: Database
) -> None:
    """llama-cpp-python's server answers /v1/models only between generations. A heartbeat
    that waited for its listing behind someone's long generation fell silent until it ended
    (the node went stale, then offline, and the doors said "model not found"); now a slow
    listing means busy, and the beat goes on with the models the engine listed last."""
    body = {"model": MODEL_ALIAS, "prompt": "A long story:", "max_tokens": 2000, "stream": True}
    # Another client of the same engine, reading its stream as fast as it comes (a reader
    # that stalls lets the server's listing through), until we hang up.
    generation = requests.post(f"{llama.url}/v1/completions", json=body, stream=True, timeout=60)
    lines = generation.iter_lines()
    next(lines)  # it is generating
    hung_up = threading.Event()

    def read_until_hung_up() -> None:
        try:
            for _ in lines:
                pass
        except Exception:
            # close() from the test's thread pulls the socket from under this read, which
            # then fails however http.client happens to be caught (AttributeError, OSError).
            if not hung_up.is_set():
                raise

    reader = threading.Thread(target=read_until_hung_up, daemon=True)
    reader.start()
    seen: list[tuple[str, float]] = []
    try:
        for _ in range(12):
            with committed.unit_of_work() as session:
                node = session.scalars(select(Node).where(Node.name == "llama@test")).one()
                age = (utcnow() - node.last_heartbeat_at).total_seconds()
                seen.append((str(node.status), age))
            time.sleep(0.5)
        assert reader.is_alive(), "the generation ended before the node was watched"
    finally:
        hung_up.set()
        generation.close()  # the server stops generating for a client that left
    assert {status for status, _ in seen} == {"online"}, seen
    assert max(age for _, age in seen) < 3, seen  # beats every second, never held up
    assert "is busy" in worker.log()


def test_closing_the_stream_stops_the_engine_and_cancels_the_job(
    key: str,
    api: FlaskClient,
    user_headers: dict[str, str],
    live_server: LiveServer,
    llama: LlamaServer,
) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0)
    stream = client.completions.create(
        model=MODEL_ALIAS, prompt="A long story:", max_tokens=1000, stream=True
    )
    for _, _part in zip(range(3), stream, strict=False):
        pass
    stream.close()
    job = api.get("/api/v1/inference/requests", headers=user_headers).get_json()["items"][0]

    def ended() -> dict | None:
        row = api.get(f"/api/v1/inference/requests/{job['id']}", headers=user_headers).get_json()
        return row if row["status"] not in ("queued", "running") else None

    row = wait_for(ended, timeout=30)
    assert row["status"] == "cancelled"
    # And the engine stopped: llama.cpp's server says so when its client goes away.
    wait_for(lambda: "Disconnected from client" in llama.log_path.read_text(), timeout=30)
