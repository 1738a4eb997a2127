"""Tool calls on the worker's side: the Ollama engine keeps the ids and indexes Ollama sends
(the official client's models drop them) and applies OpenAI's tool controls as far as Ollama
can; the runner names every call once, so the stored message, the `done` event and every
door agree. Against the Ollama double, in process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ollama_double.server import OllamaDouble
from workers.engines.base import Chunk, EngineError
from workers.engines.ollama import OllamaEngine, _first_calls, _tool_controls
from workers.tasks.inference import ENGINE_FIELDS, _name_tool_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "weather in Tokyo?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[OllamaDouble]:
    double = OllamaDouble(("127.0.0.1", 0), ["llama3.2"])
    with double.serving():
        yield double


@pytest.fixture
def engine(server: OllamaDouble) -> OllamaEngine:
    server.state.configure({"fault": None, "tool_arguments": {"city": "Tokyo"}})
    return OllamaEngine(f"http://127.0.0.1:{server.server_address[1]}", stall_timeout_s=5)


def _calls(engine: OllamaEngine, **body: Any) -> list[dict[str, Any]]:
    chunks = list(engine.stream("chat", {"model": "llama3.2", "messages": ASK, **body}))
    assert chunks[-1].done
    return [call for c in chunks for call in c.message_extras.get("tool_calls", [])]


def test_the_engine_keeps_the_id_and_index_ollama_sends(engine: OllamaEngine) -> None:
    [call] = _calls(engine, tools=[WEATHER])
    assert call["id"].startswith("call_")  # the double's, as Ollama writes them
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}


def test_the_worker_passes_the_tool_controls_to_its_engine() -> None:
    assert {"tools", "tool_choice", "parallel_tool_calls"} <= set(ENGINE_FIELDS["chat"])


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_is_what_ollama_does(engine: OllamaEngine, choice: str | None) -> None:
    assert len(_calls(engine, tools=[WEATHER], tool_choice=choice)) == 1


def test_none_offers_ollama_no_tools(engine: OllamaEngine) -> None:
    assert _calls(engine, tools=[WEATHER], tool_choice="none") == []


@pytest.mark.parametrize(
    ("choice", "named"),
    [("required", "required"), ({"type": "function", "function": {"name": "f"}}, "function f")],
)
def test_a_forced_call_fails_on_ollama_before_anything_is_sent(
    engine: OllamaEngine, server: OllamaDouble, choice: Any, named: str
) -> None:
    before = server.state.stats()["requests"]
    with pytest.raises(EngineError) as refused:
        _calls(engine, tools=[WEATHER], tool_choice=choice)
    assert refused.value.code == "engine_unsupported"
    assert not refused.value.retryable  # no other try would do better
    assert f"tool_choice {named} cannot be honoured" in str(refused.value)
    assert server.state.stats()["requests"] == before


def test_controls_ollama_does_not_take_are_never_sent_to_it() -> None:
    body, left = _tool_controls(
        {"messages": ASK, "tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": True}
    )
    assert body == {"messages": ASK, "tools": [WEATHER]}
    assert left is None
    assert (
        _tool_controls({"messages": ASK, "tools": [WEATHER], "parallel_tool_calls": False})[1] == 1
    )
    # Without tools there is nothing to keep to one.
    assert (
        _tool_controls({"messages": ASK, "tool_choice": "none", "parallel_tool_calls": False})[1]
        is None
    )


def test_parallel_tool_calls_false_keeps_the_first_call_of_the_answer() -> None:
    def call(name: str) -> dict[str, Any]:
        return {"function": {"name": name, "arguments": {}}}

    first, left = _first_calls(
        Chunk(message_extras={"tool_calls": [call("a"), call("b")], "thinking": "t"}), 1
    )
    assert first.message_extras == {"tool_calls": [call("a")], "thinking": "t"}
    later, left = _first_calls(Chunk(message_extras={"tool_calls": [call("c")]}), left)
    assert (later.message_extras, left) == ({}, 0)


def test_every_call_is_named_once_keeping_the_engines_ids() -> None:
    job_id = uuid.UUID("0123456789abcdef0123456789abcdef")
    extras: dict[str, Any] = {
        "tool_calls": [
            {"id": "call_k3x9q2ab", "function": {"index": 0, "name": "a", "arguments": {}}},
            {"function": {"name": "b", "arguments": {"x": 1}}},  # an engine that gives none
            {"id": "", "function": {"index": 0, "name": "c", "arguments": {}}},
        ]
    }
    _name_tool_calls(extras, job_id)
    assert extras["tool_calls"] == [
        {"id": "call_k3x9q2ab", "function": {"index": 0, "name": "a", "arguments": {}}},
        {"id": "call_0123456789ab_1", "function": {"index": 1, "name": "b", "arguments": {"x": 1}}},
        {"id": "call_0123456789ab_2", "function": {"index": 2, "name": "c", "arguments": {}}},
    ]
    again = {"tool_calls": [dict(c) for c in extras["tool_calls"]]}
    _name_tool_calls(again, job_id)  # a retried attempt names its calls the same
    assert again == extras
    empty: dict[str, Any] = {"thinking": "t"}
    _name_tool_calls(empty, job_id)
    assert empty == {"thinking": "t"}
