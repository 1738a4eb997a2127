"""OpenAI's tool controls (tool_choice, parallel_tool_calls) as jobs carry them: validated
with the tools they choose among, stored with the job (native API and OpenAI door alike),
and, at the OpenAI door, a forced call refused where an Ollama node could take the job
(Ollama cannot force one; docs/compat.md)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import EngineKind, InferenceRequest, Model, ModelStatus
from tests.factories import ModelReplicaFactory
from tests.support.identity import auth_headers, make_user
from web.compat.openai_jobs import chat_job
from web.schemas.openai import ChatCompletionRequest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "weather in Tokyo?"}]


def _served(name: str, *engines: str) -> Model:
    """`name`, held by one online node with a fresh heartbeat per engine kind given."""
    model: Model | None = None
    for engine in engines:
        replica = ModelReplicaFactory(
            **({"model": model} if model else {"model__name": name}),
            model__status=ModelStatus.AVAILABLE,
            node__engine_kind=engine,
            node__last_heartbeat_at=utcnow(),
        )
        model = replica.model
    assert model is not None
    return model


def _row(db_session: Session, request_id: str) -> InferenceRequest:
    db_session.expire_all()
    row = db_session.get(InferenceRequest, uuid.UUID(request_id))
    assert row is not None
    return row


def _door(client: FlaskClient, headers: dict[str, str], **body: Any) -> Any:
    payload = {"model": "tools-llama", "messages": ASK, "tools": [WEATHER], **body}
    return client.post("/v1/chat/completions", json=payload, headers=headers)


def test_an_openai_request_becomes_a_job_with_its_tool_controls() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": [WEATHER],
            "tool_choice": NAMED,
            "parallel_tool_calls": False,
        }
    )
    job = chat_job(request)
    stored = job.model_dump(mode="json", exclude_none=True)
    assert stored["tool_choice"] == NAMED
    assert stored["parallel_tool_calls"] is False
    assert stored["messages"][1]["tool_calls"][0]["id"] == "call_1"
    # OpenAI's tool message names only the call; Ollama's templates want the tool's name.
    assert stored["messages"][2]["tool_call_id"] == "call_1"
    assert stored["messages"][2]["tool_name"] == "get_weather"


def test_the_native_api_stores_the_tool_controls_with_the_job(
    client: FlaskClient, db_session: Session
) -> None:
    _served("tools-llama:latest", EngineKind.OLLAMA)
    headers = auth_headers(client, make_user())
    body = {
        "model": "tools-llama",
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "none",
        "parallel_tool_calls": False,
    }
    response = client.post("/api/v1/inference/chat", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    stored = _row(db_session, response.get_json()["id"]).input
    assert (stored["tool_choice"], stored["parallel_tool_calls"]) == ("none", False)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"tools": None, "tool_choice": "required"}, "needs tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "other"}}}, "not among"),
        ({"tool_choice": "sometimes"}, ""),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}}, ""),
        ({"parallel_tool_calls": "yes please"}, ""),
    ],
)
def test_tool_controls_that_cannot_mean_anything_are_refused_naming_the_field(
    client: FlaskClient, body: dict[str, Any], says: str
) -> None:
    response = _door(client, auth_headers(client, make_user()), **body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["type"] == "invalid_request_error"
    assert str(error["param"]).split(".")[0] in ("tool_choice", "parallel_tool_calls")
    assert says in error["message"]


@pytest.mark.parametrize("engines", [[EngineKind.OLLAMA], [EngineKind.OPENAI, EngineKind.OLLAMA]])
@pytest.mark.parametrize("choice", ["required", NAMED])
def test_a_forced_call_is_refused_where_an_ollama_node_could_take_the_job(
    client: FlaskClient, db_session: Session, engines: list[str], choice: Any
) -> None:
    _served("tools-llama:latest", *engines)
    response = _door(client, auth_headers(client, make_user()), tool_choice=choice)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "unsupported_value",
        "tool_choice",
    )
    assert "Ollama" in error["message"]
    assert "tools-llama:latest" in error["message"]
    assert db_session.query(InferenceRequest).count() == 0  # nothing was queued


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_choices_ollama_can_honour_are_taken_for_ollama_nodes(
    client: FlaskClient, db_session: Session, choice: str
) -> None:
    _served("tools-llama:latest", EngineKind.OLLAMA)
    response = _door(client, auth_headers(client, make_user()), tool_choice=choice, stream=True)
    try:
        assert response.status_code == 200
        stored = _row(db_session, response.headers["X-OllamaMax-Request-ID"]).input
        assert stored["tool_choice"] == choice
    finally:
        response.close()  # the caller leaves: its job is cancelled


def test_a_forced_call_is_queued_for_openai_compatible_engines(
    client: FlaskClient, db_session: Session
) -> None:
    _served("tools-llama:latest", EngineKind.OPENAI)
    response = _door(
        client,
        auth_headers(client, make_user()),
        tool_choice=NAMED,
        parallel_tool_calls=False,
        stream=True,
    )
    try:
        assert response.status_code == 200
        stored = _row(db_session, response.headers["X-OllamaMax-Request-ID"]).input
        assert (stored["tool_choice"], stored["parallel_tool_calls"]) == (NAMED, False)
    finally:
        response.close()


def test_the_ollama_door_ignores_openai_s_tool_controls_as_ollama_does(
    client: FlaskClient, db_session: Session
) -> None:
    _served("tools-llama:latest", EngineKind.OLLAMA)
    payload = {
        "model": "tools-llama",
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": NAMED,  # refused at the OpenAI door for an Ollama node; not Ollama's
        "parallel_tool_calls": False,
    }
    response = client.post("/api/chat", json=payload, headers=auth_headers(client, make_user()))
    try:
        assert response.status_code == 200
        stored = _row(db_session, response.headers["X-OllamaMax-Request-ID"]).input
        assert "tool_choice" not in stored
        assert "parallel_tool_calls" not in stored
        assert stored["tools"] == [WEATHER]
    finally:
        response.close()
