"""The official `ollama` client, unchanged, pointed at OllamaMax with an API key: every call
is a persisted, queued, tracked job run by a real worker against the Ollama double; pulls and
removals go through the fleet to that worker's engine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta

import ollama
import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import update

from db.base import utcnow
from db.models import Node, NodeStatus
from db.session import Database
from tests.conftest import LiveServer
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker, wait_for
from tests.pipeline.jobs import read

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module", autouse=True)
def worker(double: Double, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(double.url, name="ollama-door@test", slots=2)


@pytest.fixture
def client(
    api: FlaskClient, user_headers: dict[str, str], live_server: LiveServer
) -> ollama.Client:
    created = api.post(
        "/api/v1/users/api-keys",
        json={"name": "ollama", "scopes": ["inference"], "current_password": TEST_PASSWORD},
        headers=user_headers,
    )
    key = created.get_json()["key"]
    return ollama.Client(host=live_server.url, headers={"Authorization": f"Bearer {key}"})


def _jobs(api: FlaskClient, headers: dict[str, str]) -> list[dict]:
    return api.get("/api/v1/inference/requests", headers=headers).get_json()["items"]


def test_generate_streamed_and_not_is_a_tracked_job(
    client: ollama.Client, api: FlaskClient, user_headers: dict[str, str]
) -> None:
    whole = client.generate(
        model="llama3.2", prompt="why is the sky blue?", options={"num_predict": 12}
    )
    assert whole.done
    assert whole.done_reason in ("stop", "length")
    assert whole.eval_count == 12
    assert whole.response
    chunks = list(
        client.generate(
            model="llama3.2",
            prompt="why is the sky blue?",
            options={"num_predict": 12},
            stream=True,
        )
    )
    assert (
        "".join(c.response or "" for c in chunks) == whole.response
    )  # the double is deterministic
    assert [c.done for c in chunks][-1] is True
    assert chunks[-1].eval_count == 12
    jobs = _jobs(api, user_headers)
    assert [(j["source"], j["status"]) for j in jobs] == [("ollama", "completed")] * 2
    assert jobs[0]["output"] == whole.response


def test_chat_streamed_and_not(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    whole = client.chat(model="llama3.2", messages=messages)
    assert whole.message.role == "assistant"
    assert whole.message.content
    parts = list(client.chat(model="llama3.2", messages=messages, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done
    assert parts[-1].done_reason


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tool_calls_reach_the_client_streamed_and_not(
    client: ollama.Client, double: Double, api: FlaskClient, user_headers: dict[str, str]
) -> None:
    double.configure(tool_arguments={"city": "Tokyo"})
    messages = [{"role": "user", "content": "weather in Tokyo?"}]
    whole = client.chat(model="llama3.2", messages=messages, tools=[WEATHER_TOOL])
    [call] = whole.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Tokyo"}
    parts = list(
        client.chat(model="llama3.2", messages=messages, tools=[WEATHER_TOOL], stream=True)
    )
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        ("get_weather", {"city": "Tokyo"})
    ]
    assert parts[-1].done_reason == "stop"  # Ollama's word, even after tool calls
    stored = _jobs(api, user_headers)[0]["output_message"]
    assert stored["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_tool_call_keeps_its_id_and_index_as_ollama_sends_them(
    client: ollama.Client, double: Double, api: FlaskClient, user_headers: dict[str, str]
) -> None:
    """The official client drops them (0.6.x); other clients read them, as servers from about
    v0.13 send them: the engine's id, the same in the answer and in the stored result."""
    double.configure(tool_arguments={"city": "Tokyo"})
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "weather in Tokyo?"}],
        "tools": [WEATHER_TOOL],
        "stream": False,
    }
    answer = client._client.post("/api/chat", json=body).json()
    [call] = answer["message"]["tool_calls"]
    assert call == {
        "id": "call_" + hashlib.sha256(b"get_weather").hexdigest()[:8],  # the double's
        "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}},
    }
    assert _jobs(api, user_headers)[0]["output_message"]["tool_calls"] == [call]


def test_list_ps_show_and_the_liveness_probe(
    client: ollama.Client, live_server: LiveServer
) -> None:
    assert "llama3.2:latest" in [m.model for m in client.list().models]
    client.generate(model="llama3.2", prompt="warm up", options={"num_predict": 2})
    assert isinstance(client.ps().models, list)
    shown = client.show("llama3.2")
    assert shown.details is not None
    # What the worker's engine said of the model when it first listed it (its /api/show).
    assert shown.modelfile == "FROM llama3.2:latest\n"
    assert shown.capabilities == ["completion"]
    assert requests.get(live_server.url + "/", timeout=5).text == "Ollama is running"
    assert requests.get(live_server.url + "/api/version", timeout=5).json()["version"]


def test_an_unchanged_script_needs_only_two_environment_variables(
    client: ollama.Client, api: FlaskClient, user_headers: dict[str, str], live_server: LiveServer
) -> None:
    """What a new user does: OLLAMA_HOST at us, OLLAMA_API_KEY (which the official client
    sends as a bearer token) set to an OllamaMax key, and their script as it was."""
    script = (
        "import ollama; "
        "reply = ollama.chat(model='llama3.2', messages=[{'role': 'user', 'content': 'hi'}]); "
        "print(reply.message.content)"
    )
    key = client._client.headers["authorization"].removeprefix("Bearer ")
    env = {**os.environ, "OLLAMA_HOST": live_server.url, "OLLAMA_API_KEY": key}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    jobs = _jobs(api, user_headers)
    assert [(j["source"], j["kind"], j["status"]) for j in jobs] == [
        ("ollama", "chat", "completed")
    ]
    assert jobs[0]["output"] == done.stdout.strip()


def test_errors_come_in_ollamas_shape(client: ollama.Client, live_server: LiveServer) -> None:
    stranger = ollama.Client(host=live_server.url, headers={"Authorization": "Bearer omx_nope"})
    with pytest.raises(ollama.ResponseError) as refused:
        stranger.generate(model="llama3.2", prompt="hi")
    assert refused.value.status_code == 401
    assert isinstance(refused.value.error, str)
    with pytest.raises(ollama.ResponseError) as unknown:
        client.generate(model="no-such-model", prompt="hi")
    assert unknown.value.status_code == 404
    assert unknown.value.error == "model 'no-such-model:latest' not found"


def test_a_client_that_hangs_up_mid_stream_cancels_its_job(
    client: ollama.Client, api: FlaskClient, user_headers: dict[str, str], double: Double
) -> None:
    double.configure(token_delay_s=0.1)
    stream = client.generate(
        model="llama3.2", prompt="tell me a long story", options={"num_predict": 200}, stream=True
    )
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()  # the HTTP response is closed
    job_id = _jobs(api, user_headers)[0]["id"]
    wait_for(lambda: read(api, user_headers, job_id)["status"] == "cancelled", timeout=20)
    wait_for(lambda: double.stats()["disconnects"], timeout=5)  # and the engine stream closed


# --- model management through the fleet ------------------------------------------------


@pytest.fixture
def operator(
    live_server: LiveServer, operator_headers: dict[str, str], database: Database
) -> ollama.Client:
    """An operator's client (pulls and removals take fleet:write). A pull goes to every
    online Ollama node: nodes other modules' workers left behind, not beating any more,
    are marked offline, as the stale-node sweep would."""
    with database.unit_of_work() as session:
        session.execute(
            update(Node)
            .where(Node.last_heartbeat_at < utcnow() - timedelta(seconds=10))
            .values(status=NodeStatus.OFFLINE)
        )
    return ollama.Client(host=live_server.url, headers=operator_headers)


def test_a_pull_and_a_removal_go_through_the_fleet(
    operator: ollama.Client, double: Double, worker: Worker
) -> None:
    name = "tinyllama:1b"
    double.configure(token_delay_s=0.02)  # the double's pull steps take this long each

    lines = list(operator.pull(name, stream=True))

    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = [line for line in lines if line.total]
    assert layer
    assert [line.completed or 0 for line in layer] == sorted(line.completed or 0 for line in layer)
    assert layer[-1].completed == layer[-1].total
    assert name in double.stats()["models"]
    assert name in [m.model for m in operator.list().models]  # available across the fleet
    reply = operator.generate(model=name, prompt="hi", options={"num_predict": 3})
    assert reply.eval_count == 3  # the node serves it (its heartbeat follows the new queue)

    assert operator.pull(name, stream=False).status == "success"  # again: an update

    assert operator.delete(name).status == "success"
    assert name not in double.stats()["models"]
    assert name not in [m.model for m in operator.list().models]
    with pytest.raises(ollama.ResponseError) as gone:
        operator.delete(name)
    assert (gone.value.status_code, gone.value.error) == (404, f"model '{name}' not found")


def test_a_pull_the_registry_cannot_serve_fails_as_ollama_says(
    operator: ollama.Client, double: Double, worker: Worker
) -> None:
    double.configure(missing_from_registry=["nosuch:latest"])
    try:
        streamed = operator.pull("nosuch", stream=True)
        assert next(streamed).status == "pulling manifest"
        with pytest.raises(ollama.ResponseError) as midstream:
            list(streamed)
        assert midstream.value.status_code == -1
        assert midstream.value.error == "pull model manifest: file does not exist"
        with pytest.raises(ollama.ResponseError) as whole:
            operator.pull("nosuch", stream=False)
        assert (whole.value.status_code, whole.value.error) == (
            500,
            "pull model manifest: file does not exist",
        )
    finally:
        double.configure(missing_from_registry=[])


def test_copy_create_and_push_say_why_not(operator: ollama.Client) -> None:
    for call in (
        lambda: operator.copy("llama3.2", "mine"),
        lambda: operator.create(model="mine", from_="llama3.2"),
        lambda: operator.push("mine"),
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 400
        assert "not supported by OllamaMax" in refused.value.error


def test_curl_like_requests_need_no_content_type(
    client: ollama.Client, live_server: LiveServer
) -> None:
    """`curl .../api/generate -d '{...}'` sends application/x-www-form-urlencoded."""
    authorization = client._client.headers["authorization"]
    body = json.dumps({"model": "llama3.2", "prompt": "hi", "stream": False})
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Authorization": authorization}
        if content_type:
            headers["Content-Type"] = content_type
        answer = requests.post(
            f"{live_server.url}/api/generate", data=body, headers=headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["done"] is True
