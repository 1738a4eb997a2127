"""The official `openai` client, unchanged, pointed at OllamaMax's /v1 with an API key as its
key: every call is a persisted, queued, tracked job run by a real worker against the Ollama
double."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest
import requests
from flask.testing import FlaskClient

from tests.conftest import LiveServer
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker, wait_for
from tests.pipeline.jobs import read

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module", autouse=True)
def worker(double: Double, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(double.url, name="openai-door@test", slots=2)


@pytest.fixture
def key(api: FlaskClient, user_headers: dict[str, str]) -> str:
    created = api.post(
        "/api/v1/users/api-keys",
        json={"name": "openai", "scopes": ["inference"], "current_password": TEST_PASSWORD},
        headers=user_headers,
    )
    return str(created.get_json()["key"])


@pytest.fixture
def client(key: str, live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0)


def _jobs(api: FlaskClient, headers: dict[str, str]) -> list[dict]:
    return api.get("/api/v1/inference/requests", headers=headers).get_json()["items"]


def test_chat_completions_whole_and_streamed_are_tracked_jobs(
    client: openai.OpenAI, api: FlaskClient, user_headers: dict[str, str]
) -> None:
    messages = [{"role": "user", "content": "why is the sky blue?"}]
    whole = client.chat.completions.create(model="llama3.2", messages=messages, max_tokens=12)
    choice = whole.choices[0]
    assert whole.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12

    stream = client.chat.completions.create(
        model="llama3.2",
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # the double is deterministic
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] in ("stop", "length")
    assert set(finishing[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")

    jobs = _jobs(api, user_headers)
    assert [(j["source"], j["kind"], j["status"]) for j in jobs] == [
        ("openai", "chat", "completed")
    ] * 2
    assert chunks[0].id == f"chatcmpl-{jobs[0]['id'].replace('-', '')}"  # same job, findable


def test_completions_whole_streamed_and_echoed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="llama3.2", prompt="The sky is", max_tokens=8)
    assert whole.object == "text_completion"
    assert whole.choices[0].text
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 8
    parts = list(
        client.completions.create(model="llama3.2", prompt="The sky is", max_tokens=8, stream=True)
    )
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason in ("stop", "length")
    echoed = client.completions.create(
        model="llama3.2", prompt="The sky is", max_tokens=8, echo=True
    )
    assert echoed.choices[0].text == "The sky is" + whole.choices[0].text


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


# The id the double gives the call, as Ollama (from about v0.13) gives one to each call.
DOUBLES_CALL_ID = "call_" + hashlib.sha256(b"get_weather").hexdigest()[:8]


def _stored_calls(api: FlaskClient, headers: dict[str, str], answer_id: str) -> list[dict]:
    job_id = str(uuid.UUID(answer_id.removeprefix("chatcmpl-")))
    return read(api, headers, job_id)["output_message"]["tool_calls"]  # type: ignore[no-any-return]


def test_tool_calls_come_as_openai_sends_them(
    client: openai.OpenAI, double: Double, api: FlaskClient, user_headers: dict[str, str]
) -> None:
    double.configure(tool_arguments={"city": "Tokyo"})
    messages = [{"role": "user", "content": "weather in Tokyo?"}]
    whole = client.chat.completions.create(
        model="llama3.2", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tokyo"}
    # The engine's id, kept end to end: the answer and the stored result name the call alike.
    assert call.id == DOUBLES_CALL_ID
    [stored] = _stored_calls(api, user_headers, whole.id)
    assert stored == {
        "id": call.id,
        "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}},
    }

    chunks = list(
        client.chat.completions.create(
            model="llama3.2", messages=messages, tools=[WEATHER_TOOL], stream=True
        )
    )
    calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.id, c.function.name) for c in calls] == [
        (0, DOUBLES_CALL_ID, "get_weather")
    ]
    assert json.loads(calls[0].function.arguments or "") == {"city": "Tokyo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    [stored] = _stored_calls(api, user_headers, chunks[0].id)
    assert (stored["id"], stored["function"]["index"]) == (calls[0].id, calls[0].index)

    # The answer goes back as a tool message, as OpenAI clients send it.
    follow_up = client.chat.completions.create(
        model="llama3.2",
        messages=[
            *messages,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
    )
    assert follow_up.choices[0].message.content


def test_tool_choice_none_offers_an_ollama_engine_no_tools(
    client: openai.OpenAI, double: Double
) -> None:
    double.configure(tool_arguments={"city": "Tokyo"})  # the double calls any tool offered
    messages = [{"role": "user", "content": "weather in Tokyo?"}]
    whole = client.chat.completions.create(
        model="llama3.2", messages=messages, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert whole.choices[0].message.tool_calls is None
    assert whole.choices[0].finish_reason == "stop"
    assert whole.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="llama3.2",
            messages=messages,
            tools=[WEATHER_TOOL],
            tool_choice="none",
            parallel_tool_calls=False,
            stream=True,
        )
    )
    assert not [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_a_forced_tool_call_on_a_model_only_ollama_serves_is_a_clear_400(
    client: openai.OpenAI,
    double: Double,
    api: FlaskClient,
    user_headers: dict[str, str],
    choice: Any,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": "weather in Tokyo?"}],
            tools=[WEATHER_TOOL],
            tool_choice=choice,
        )
    assert refused.value.code == "unsupported_value"
    assert refused.value.param == "tool_choice"
    assert "served by Ollama engines, which cannot force a tool call" in refused.value.message
    assert _jobs(api, user_headers) == []  # nothing was queued


def test_models_list_and_read(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "llama3.2:latest" in ids
    assert client.models.retrieve("llama3.2").id == "llama3.2:latest"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"


def test_errors_come_in_openais_shape(
    client: openai.OpenAI, key: str, live_server: LiveServer
) -> None:
    stranger = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="omx_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "invalid_api_key"
    assert refused.value.body["type"] == "invalid_request_error"  # type: ignore[index]

    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], temperature=7
        )
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]

    broken = requests.post(
        f"{live_server.url}/v1/completions",
        data=b"{not json",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=5,
    )
    assert broken.status_code == 400
    assert set(broken.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("bearer", ["wrong", "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmVkIGVsc2V3aGVyZQ"])
def test_a_bearer_that_is_neither_key_nor_our_jwt_is_a_401(
    live_server: LiveServer, bearer: str
) -> None:
    """Neither an API key nor a JWT we issued (a malformed one, another issuer's): the client
    gets the AuthenticationError it understands, not a 500 it would retry."""
    stranger = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=bearer, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.models.list()
    assert refused.value.code == "invalid_api_key"


def test_curl_like_requests_need_no_content_type(key: str, live_server: LiveServer) -> None:
    """OpenAI's servers read the body as JSON whatever Content-Type says, and so do we."""
    body = json.dumps(
        {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    )
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Authorization": f"Bearer {key}"}
        if content_type:
            headers["Content-Type"] = content_type
        answer = requests.post(
            f"{live_server.url}/v1/chat/completions", data=body, headers=headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["object"] == "chat.completion"


def test_remote_images_are_refused_and_data_urls_accepted(
    client: openai.OpenAI, key: str, live_server: LiveServer
) -> None:
    tiny_png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
        "awAAAABJRU5ErkJggg=="
    )

    def ask(url: str) -> requests.Response:
        parts = [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        return requests.post(
            f"{live_server.url}/v1/chat/completions",
            json={
                "model": "llama3.2",
                "messages": [{"role": "user", "content": parts}],
                "max_tokens": 2,
            },
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )

    refused = ask("http://169.254.169.254/latest/meta-data")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages.0.content"
    assert ask(f"data:image/png;base64,{tiny_png}").status_code == 200


def test_a_failed_job_is_openais_error_and_clients_are_told_not_to_retry(
    client: openai.OpenAI, double: Double
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    double.configure(fault="500", fault_count=100)  # every try fails: the job fails
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="llama3.2", messages=messages)
    assert failed.value.status_code == 502
    assert failed.value.code == "request_failed"
    assert failed.value.response.headers["x-should-retry"] == "false"

    stream = client.chat.completions.create(model="llama3.2", messages=messages, stream=True)
    with pytest.raises(openai.APIError) as mid_stream:
        list(stream)  # the role chunk, then an error event instead of [DONE]
    assert mid_stream.value.code == "request_failed"


def test_a_client_that_hangs_up_mid_stream_cancels_its_job(
    client: openai.OpenAI, api: FlaskClient, user_headers: dict[str, str], double: Double
) -> None:
    double.configure(token_delay_s=0.1)
    stream = client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "tell me a long story"}],
        max_tokens=200,
        stream=True,
    )
    for _, _chunk in zip(range(4), stream, strict=False):
        pass
    stream.close()  # the HTTP response is closed
    job_id = _jobs(api, user_headers)[0]["id"]
    wait_for(lambda: read(api, user_headers, job_id)["status"] == "cancelled", timeout=20)
    wait_for(lambda: double.stats()["disconnects"], timeout=5)  # and the engine stream closed
