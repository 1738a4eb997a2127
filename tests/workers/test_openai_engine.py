"""The OpenAI-compatible engine's translation, against scripted SSE answers served through
the official client's own HTTP stack (the real llama.cpp server is in
tests/pipeline/test_real_model.py; these cover what a small base model never does: tool
calls, usage in the stream, faults)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from workers.engines.base import Chunk, EngineError
from workers.engines.openai import OpenAIEngine, request_parameters

Handler = Callable[[httpx2.Request], httpx2.Response]


def _sse(*events: Any) -> httpx2.Response:
    body = "".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in (*events, "[DONE]")
    )
    return httpx2.Response(200, text=body, headers={"content-type": "text/event-stream"})


def _chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def _engine(handler: Handler, seen: list[httpx2.Request] | None = None) -> OpenAIEngine:
    def record(request: httpx2.Request) -> httpx2.Response:
        if seen is not None:
            seen.append(request)
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "m"}]})
        return handler(request)

    client = httpx2.Client(transport=httpx2.MockTransport(record))
    return OpenAIEngine("http://engine:8000", stall_timeout_s=5, http_client=client)


def _run(engine: OpenAIEngine, kind: str = "chat", **body: Any) -> list[Chunk]:
    body.setdefault("model", "m")
    if kind == "chat":
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    else:
        body.setdefault("prompt", "hi")
    return list(engine.stream(kind, body))


def test_tool_calls_in_fragments_become_ollamas_on_the_final_chunk() -> None:
    call = {"index": 0, "id": "call_9", "type": "function"}
    engine = _engine(
        lambda _: _sse(
            _chat_chunk({"role": "assistant", "content": ""}),
            _chat_chunk(
                {"tool_calls": [{**call, "function": {"name": "weather", "arguments": ""}}]}
            ),
            _chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            _chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            _chat_chunk({}, "tool_calls"),
        )
    )
    chunks = _run(engine)
    final = chunks[-1]
    assert final.done
    assert final.done_reason == "stop"  # Ollama's word for it
    assert final.message_extras["tool_calls"] == [
        {"id": "call_9", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    ]


def test_usage_in_the_stream_wins_and_durations_are_measured() -> None:
    engine = _engine(
        lambda _: _sse(
            _chat_chunk({"content": "a"}),
            _chat_chunk({"content": "b"}, "length"),
            {
                **_chat_chunk({}),
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
            },
        )
    )
    chunks = _run(engine)
    assert "".join(c.text for c in chunks) == "ab"
    metrics = chunks[-1].metrics
    assert metrics["prompt_eval_count"] == 7
    assert metrics["eval_count"] == 2
    assert metrics["total_duration"] >= metrics["eval_duration"] >= 0  # type: ignore[operator]
    assert chunks[-1].done_reason == "length"


def _completion_without_usage() -> httpx2.Response:
    parts = [
        {
            "id": "c",
            "object": "text_completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "text": t, "finish_reason": None}],
        }
        for t in ("x", "y", "z")
    ]
    last = {**parts[0], "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
    return _sse(*parts, last)


def _tokenizer(answers: dict[str, httpx2.Response]) -> Handler:
    """Completions stream no usage; the tokenize endpoints answer as `answers` says (404
    for the others)."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/completions":
            return _completion_without_usage()
        return answers.get(request.url.path, httpx2.Response(404, json={"detail": "Not Found"}))

    return handle


def _tokenize_calls(seen: list[httpx2.Request]) -> list[str]:
    return [r.url.path for r in seen if "tokenize" in r.url.path]


def test_without_usage_output_tokens_are_counted_and_the_prompt_by_the_server() -> None:
    # llama-cpp-python's server: /extras/tokenize/count.
    seen: list[httpx2.Request] = []
    count = {"/extras/tokenize/count": httpx2.Response(200, json={"count": 5})}
    engine = _engine(_tokenizer(count), seen)
    chunks = _run(engine, kind="generate", prompt="count these words")
    assert chunks[-1].metrics["eval_count"] == 3
    assert chunks[-1].metrics["prompt_eval_count"] == 5
    asked = json.loads(next(r for r in seen if "tokenize" in r.url.path).content)
    assert asked["input"] == "count these words"
    _run(engine, kind="generate")
    assert _tokenize_calls(seen) == ["/extras/tokenize/count"] * 2


def test_llama_cpp_s_own_server_counts_at_tokenize() -> None:
    seen: list[httpx2.Request] = []
    tokens = {"/tokenize": httpx2.Response(200, json={"tokens": [1, 2, 3, 4]})}
    engine = _engine(_tokenizer(tokens), seen)
    assert _run(engine, kind="generate")[-1].metrics["prompt_eval_count"] == 4
    _run(engine, kind="generate")
    # Found on the second try, asked there first from then on.
    assert _tokenize_calls(seen) == ["/extras/tokenize/count", "/tokenize", "/tokenize"]


def test_a_server_without_a_tokenizer_leaves_the_count_unknown_and_is_not_asked_again() -> None:
    seen: list[httpx2.Request] = []
    engine = _engine(_tokenizer({}), seen)
    assert _run(engine, kind="generate")[-1].metrics["prompt_eval_count"] is None
    _run(engine, kind="generate")
    assert _tokenize_calls(seen) == ["/extras/tokenize/count", "/tokenize"]


def test_a_chat_prompt_is_counted_from_its_messages_text() -> None:
    seen: list[httpx2.Request] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/extras/tokenize/count":
            return httpx2.Response(200, json={"count": 9})
        return _sse(_chat_chunk({"content": "a"}, "stop"))

    engine = _engine(handle, seen)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert _run(engine, messages=messages)[-1].metrics["prompt_eval_count"] == 9
    asked = json.loads(next(r for r in seen if "tokenize" in r.url.path).content)
    assert asked["input"] == "be brief\nhi"


def test_a_server_that_refuses_stream_options_is_asked_again_without() -> None:
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        if "stream_options" in json.loads(request.content):
            return httpx2.Response(400, json={"error": {"message": "unknown field stream_options"}})
        return _sse(_chat_chunk({"content": "ok"}, "stop"))

    engine = _engine(answer, seen)
    assert _run(engine)[-1].done
    assert _run(engine)[-1].done  # and it remembers
    posts = [json.loads(r.content) for r in seen if r.url.path == "/v1/chat/completions"]
    assert ["stream_options" in p for p in posts] == [True, False, False]


@pytest.mark.parametrize(
    ("answer", "code", "retryable"),
    [
        (lambda _: httpx2.Response(503, json={"error": {"message": "busy"}}), "engine_503", True),
        (
            lambda _: httpx2.Response(404, json={"error": {"message": "no model"}}),
            "engine_404",
            False,
        ),
        (
            lambda _: _sse(_chat_chunk({"content": "a"}), {"error": {"message": "oom"}}),
            "engine_stream_error",
            True,
        ),
        (lambda _: _sse(_chat_chunk({"content": "a"})), "engine_truncated", True),
    ],
)
def test_faults_become_engine_errors(answer: Handler, code: str, retryable: bool) -> None:
    with pytest.raises(EngineError) as raised:
        _run(_engine(answer))
    assert raised.value.code == code
    assert raised.value.retryable is retryable


def test_ollama_options_and_messages_become_openai_parameters() -> None:
    params = request_parameters(
        "chat",
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                },
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "format": {"type": "object"},
            "options": {"num_predict": 5, "temperature": 0.2, "top_k": 3, "stop": ["\n"]},
        },
    )
    assert params["max_tokens"] == 5
    assert params["temperature"] == 0.2
    assert params["stop"] == ["\n"]
    assert params["extra_body"] == {"top_k": 3}
    assert params["response_format"]["type"] == "json_schema"
    image = params["messages"][0]["content"][1]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert json.loads(params["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"a": 1}
    # The call had no id (Ollama's do not always): its answer takes the id the call was sent with.
    assert params["messages"][2]["tool_call_id"] == params["messages"][1]["tool_calls"][0]["id"]
    generate = request_parameters("generate", {"model": "m", "prompt": "p", "system": "s"})
    assert generate["prompt"] == "s\n\np"
    with pytest.raises(EngineError):
        request_parameters("generate", {"model": "m", "prompt": "p", "images": ["aGk="]})


def test_models_are_listed_canonically_and_served_by_their_own_id() -> None:
    seen: list[httpx2.Request] = []
    engine = _engine(lambda _: _sse(_chat_chunk({}, "stop")), seen)
    assert [m.name for m in engine.models()] == ["m:latest"]
    assert engine.loaded() == {"m:latest"}
    _run(engine, model="m:latest")
    post = next(r for r in seen if r.method == "POST")
    assert json.loads(post.content)["model"] == "m"  # the server's spelling, not ours
    with pytest.raises(EngineError) as refused:
        list(engine.pull("m"))
    assert refused.value.code == "engine_unsupported"


def test_a_tool_answer_keeps_the_id_of_the_call_it_answers() -> None:
    params = request_parameters(
        "chat",
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"id": "call_abc", "function": {"name": "w", "arguments": {}}}],
                },
                {"role": "tool", "content": "sunny", "tool_call_id": "call_abc"},
            ],
        },
    )
    assert params["messages"][1]["tool_calls"][0]["id"] == "call_abc"
    assert params["messages"][2]["tool_call_id"] == "call_abc"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (httpx2.ReadTimeout("slow"), "engine_stalled"),
        (httpx2.ConnectError("refused"), "engine_unreachable"),
        # No connection within the timeout is an engine away, not a busy one.
        (httpx2.ConnectTimeout("black hole"), "engine_unreachable"),
    ],
)
def test_transport_faults_are_retryable_engine_errors(fault: Exception, code: str) -> None:
    def fail(request: httpx2.Request) -> httpx2.Response:
        raise fault

    with pytest.raises(EngineError) as raised:
        _run(_engine(fail))
    assert raised.value.code == code
    assert raised.value.retryable


def test_a_listing_slower_than_its_timeout_is_a_busy_engine() -> None:
    """The listing has a short timeout of its own (a heartbeat asks for it), and its
    timing out reads as a stall, which the heartbeat takes for a busy engine."""
    timeouts: list[Any] = []

    def slow(request: httpx2.Request) -> httpx2.Response:
        timeouts.append(request.extensions.get("timeout"))
        raise httpx2.ReadTimeout("generating")

    client = httpx2.Client(transport=httpx2.MockTransport(slow))
    engine = OpenAIEngine(
        "http://engine:8000", stall_timeout_s=60, listing_timeout_s=1.5, http_client=client
    )
    with pytest.raises(EngineError) as raised:
        engine.models()
    assert raised.value.code == "engine_stalled"
    assert timeouts[0]["read"] == 1.5


def test_the_version_is_read_where_servers_give_one() -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/version":
            return httpx2.Response(200, json={"version": "0.9.2"})
        return httpx2.Response(404)

    assert _engine(answer).version() == "0.9.2"
    assert _engine(lambda _: httpx2.Response(200, json={})).version() is None


TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "choice", ["none", "auto", "required", {"type": "function", "function": {"name": "weather"}}]
)
def test_tool_controls_reach_the_engine_as_openai_parameters(choice: Any) -> None:
    seen: list[httpx2.Request] = []
    engine = _engine(lambda _: _sse(_chat_chunk({"content": "ok"}, "stop")), seen)
    _run(engine, tools=[TOOL], tool_choice=choice, parallel_tool_calls=False)
    [sent] = [json.loads(r.content) for r in seen if r.url.path == "/v1/chat/completions"]
    assert sent["tools"] == [TOOL]
    assert sent["tool_choice"] == choice
    assert sent["parallel_tool_calls"] is False


def test_tool_controls_without_tools_are_not_sent() -> None:
    """OpenAI's servers refuse tool_choice without tools; it means nothing there anyway."""
    seen: list[httpx2.Request] = []
    engine = _engine(lambda _: _sse(_chat_chunk({"content": "ok"}, "stop")), seen)
    _run(engine, tool_choice="none", parallel_tool_calls=True)
    [sent] = [json.loads(r.content) for r in seen if r.url.path == "/v1/chat/completions"]
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)


def test_several_calls_keep_their_ids_in_the_order_of_their_indexes() -> None:
    def fragment(index: int, id_: str | None, name: str, arguments: str) -> dict[str, Any]:
        call = {"index": index, "function": {"name": name, "arguments": arguments}}
        return {**call, "id": id_, "type": "function"} if id_ else call

    engine = _engine(
        lambda _: _sse(
            _chat_chunk({"tool_calls": [fragment(1, None, "b", "{}")]}),
            _chat_chunk({"tool_calls": [fragment(0, "call_a", "a", '{"x": 1}')]}),
            _chat_chunk({}, "tool_calls"),
        )
    )
    assert _run(engine)[-1].message_extras["tool_calls"] == [
        {"id": "call_a", "function": {"name": "a", "arguments": {"x": 1}}},
        {"function": {"name": "b", "arguments": {}}},  # no id: the worker names it
    ]


def test_embeddings_come_back_in_order_unit_length_and_cut_to_the_dimensions() -> None:
    seen: list[httpx2.Request] = []
    engine = _engine(
        lambda _: httpx2.Response(
            200,
            json={
                "object": "list",
                "model": "m",
                # Out of order, and as llama.cpp's server sends them: not unit length.
                "data": [
                    {"object": "embedding", "index": 1, "embedding": [0.0, 3.0, 4.0]},
                    {"object": "embedding", "index": 0, "embedding": [6.0, 0.0, 8.0]},
                ],
                "usage": {"prompt_tokens": 7, "total_tokens": 7},
            },
        ),
        seen,
    )
    (whole,) = list(engine.stream("embed", {"model": "m", "input": ["a", "b"]}))
    assert whole.done
    assert whole.message_extras["embeddings"] == [[0.6, 0.0, 0.8], [0.0, 0.6, 0.8]]
    assert whole.metrics["prompt_eval_count"] == 7
    assert whole.metrics["total_duration"] > 0
    sent = json.loads(seen[-1].content)
    assert sent == {"model": "m", "input": ["a", "b"], "encoding_format": "float"}

    (cut,) = list(engine.stream("embed", {"model": "m", "input": "a", "dimensions": 2}))
    assert cut.message_extras["embeddings"] == [[1.0, 0.0], [0.0, 1.0]]


def test_embeddings_that_must_not_be_truncated_are_refused_on_openai_engines() -> None:
    engine = _engine(lambda _: httpx2.Response(500))
    with pytest.raises(EngineError) as refused:
        list(engine.stream("embed", {"model": "m", "input": "a", "truncate": False}))
    assert refused.value.code == "engine_unsupported"
    assert not refused.value.retryable


def test_a_tool_name_repeated_in_every_fragment_is_kept_once() -> None:
    """llama-cpp-python's server repeats the whole name in each streamed piece of a call."""
    named = {"index": 0, "id": "call_1", "type": "function"}
    engine = _engine(
        lambda _: _sse(
            _chat_chunk({"tool_calls": [{**named, "function": {"name": "Joke", "arguments": ""}}]}),
            _chat_chunk(
                {"tool_calls": [{"index": 0, "function": {"name": "Joke", "arguments": '{"a": '}}]}
            ),
            _chat_chunk(
                {"tool_calls": [{"index": 0, "function": {"name": "Joke", "arguments": "1}"}}]}
            ),
            _chat_chunk({}, "tool_calls"),
        )
    )
    final = _run(engine)[-1]
    assert final.message_extras["tool_calls"] == [
        {"id": "call_1", "function": {"name": "Joke", "arguments": {"a": 1}}}
    ]


def test_what_its_models_can_do_is_what_the_operator_said_or_unknown() -> None:
    client = httpx2.Client(transport=httpx2.MockTransport(lambda _: httpx2.Response(404)))
    said = OpenAIEngine(
        "http://engine:8000", stall_timeout_s=5, capabilities=["embedding"], http_client=client
    )
    assert said.describe("m") == {"capabilities": ["embedding"]}
    assert _engine(lambda _: httpx2.Response(404)).describe("m") is None  # not guessed
