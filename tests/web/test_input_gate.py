"""The input gate (web/validation.py: gate_request), fuzz-style: every bad input is sent to
every route that takes a body (POST, PUT, PATCH under /api/v1 and the front doors, read from
the app's url_map), and each must answer 400 in that route's own error shape, never a 5xx
and never reaching a view. Then the limits must let a large, real chat through."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule

from db.models import Role
from tests.support.identity import auth_headers, make_user

# Small limits, so that an over-long string or array is cheap to send to every route.
DEPTH, STRING_CHARS, ITEMS = 16, 2048, 100
BODY_METHODS = ("POST", "PUT", "PATCH")


def _nested(levels: int) -> str:
    """An object whose "x" holds arrays `levels` deep in all (the object is one level)."""
    return '{"x": ' + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "}"


# name: (raw body, the code, the field it names (None: not checked))
BAD_BODIES: dict[str, tuple[str, str, str | None]] = {
    "nul_in_value": ('{"model": "m", "prompt": "a\\u0000b"}', "invalid_characters", "body.prompt"),
    "nul_in_key": ('{"model": "m", "a\\u0000b": 1}', "invalid_characters", "body.a\\u0000b"),
    "nul_deep": (
        '{"messages": [{"role": "user", "content": "a\\u0000"}]}',
        "invalid_characters",
        "body.messages.0.content",
    ),
    # A lone surrogate is valid JSON escaping but no character: no encoder writes it.
    "surrogate_in_value": (
        '{"model": "m", "prompt": "a\\ud800b"}',
        "invalid_characters",
        "body.prompt",
    ),
    "surrogate_deep": (
        '{"messages": [{"role": "user", "content": "\\udfff"}], "options": {"stop": ["x"]}}',
        "invalid_characters",
        "body.messages.0.content",
    ),
    "nan": ('{"model": "m", "options": {"temperature": NaN}}', "invalid_number", None),
    "infinity": ('{"model": "m", "temperature": Infinity}', "invalid_number", "body.temperature"),
    "minus_infinity": ('{"x": [1, -Infinity]}', "invalid_number", "body.x.1"),
    "overflow": ('{"model": "m", "temperature": 1e999}', "invalid_number", "body.temperature"),
    "nested_100k": ("[" * 100_000 + "]" * 100_000, "too_deep", None),
    "nested_unclosed_100k": ("[" * 100_000, "too_deep", None),
    "depth_limit_plus_one": (_nested(DEPTH + 1), "too_deep", "body.x" + ".0" * (DEPTH - 1)),
    "long_string": (json.dumps({"prompt": "a" * (STRING_CHARS + 1)}), "too_large", "body.prompt"),
    "long_key": (json.dumps({"k" * (STRING_CHARS + 1): 1}), "too_large", None),
    "long_array": (json.dumps({"messages": [1] * (ITEMS + 1)}), "too_large", "body.messages"),
    "big_object": (json.dumps({f"k{i}": i for i in range(ITEMS + 1)}), "too_large", "body"),
}
NATIVE_FIELDS = {"code", "message", "details"}
OPENAI_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture
def gated(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory(
        input_max_depth=DEPTH, input_max_string_chars=STRING_CHARS, input_max_items=ITEMS
    )


def _sample(rule: Rule) -> dict[str, Any]:
    return {
        name: uuid.uuid4() if "uuid" in type(conv).__name__.lower() else "x"
        for name, conv in rule._converters.items()
    }


def body_routes(app: Flask) -> Iterator[tuple[str, str]]:
    """(method, path) for every route that takes a body: the native API and the doors."""
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        if rule.websocket:
            continue
        for method in sorted(set(BODY_METHODS) & (rule.methods or set())):
            path = adapter.build(rule.endpoint, _sample(rule), method=method)
            if path.startswith(("/api/", "/v1/")):
                yield method, path


def _door(path: str) -> str:
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/v1/") or path == "/api/v1":
        return "native"
    return "ollama"


def test_the_routes_are_found(gated: Flask) -> None:
    """The enumeration is not empty and covers each kind of route (so the loop below means
    something)."""
    routes = set(body_routes(gated))
    for expected in [
        ("POST", "/api/v1/inference/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/chat"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/api/v1/auth/login"),
    ]:
        assert expected in routes
    assert {_door(path) for _, path in routes} == {"native", "ollama", "openai"}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
@pytest.mark.parametrize("content_type", ["application/json", None])
def test_every_bad_body_is_a_400_in_each_routes_shape(
    gated: Flask, case: str, content_type: str | None
) -> None:
    body, code, field = BAD_BODIES[case]
    client = gated.test_client()
    wrong: list[str] = []
    for method, path in body_routes(gated):
        door = _door(path)
        if content_type is None and door == "native":
            continue  # the native API refuses a body not sent as JSON with 415
        response = client.open(path, method=method, data=body.encode(), content_type=content_type)
        answer = response.get_json(silent=True)
        where = f"{method} {path}: {response.status_code} {response.get_data(as_text=True)[:300]}"
        if response.status_code != 400 or not isinstance(answer, dict):
            wrong.append(where)
            continue
        error = answer.get("error")
        if door == "ollama":
            ok = set(answer) == {"error"} and isinstance(error, str) and bool(error)
        elif door == "openai":
            ok = (
                isinstance(error, dict)
                and set(error) == OPENAI_FIELDS
                and error["code"] == code
                and error["type"] == "invalid_request_error"
                and (field is None or error["param"] == field)
            )
        else:
            ok = (
                isinstance(error, dict)
                and set(error) == NATIVE_FIELDS
                and error["code"] == code
                and (field is None or error["details"]["field"] == field)
            )
        if not ok:
            wrong.append(where)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("query", ["q=a%00b", "a%00b=1", "after=1&q=x&q=y%00"])
def test_nul_in_a_query_string_is_a_400_on_every_route(gated: Flask, query: str) -> None:
    client = gated.test_client()
    wrong = []
    for method, path in body_routes(gated):
        response = client.open(f"{path}?{query}", method=method, json={})
        if response.status_code != 400:
            wrong.append(f"{method} {path}: {response.status_code}")
        elif (
            _door(path) == "native" and response.get_json()["error"]["code"] != "invalid_characters"
        ):
            wrong.append(f"{method} {path}: {response.get_json()}")
    assert not wrong, "\n".join(wrong)
    native = client.get(f"/api/v1/users?{query}")
    assert native.status_code == 400  # on a GET too, before authentication


@pytest.mark.parametrize("path", ["/v1/models/llama%003.2", "/v1/models/library/x%00"])
def test_nul_in_a_path_is_a_400_not_a_500(gated: Flask, path: str) -> None:
    response = gated.test_client().get(path)
    assert response.status_code == 400, response.get_data(as_text=True)


def test_the_messages_name_where(gated: Flask) -> None:
    client = gated.test_client()
    nested = client.post(
        "/api/v1/inference/chat", data=_nested(DEPTH + 1), content_type="application/json"
    )
    error = nested.get_json()["error"]
    assert error["details"] == {"field": "body.x" + ".0" * (DEPTH - 1), "limit": DEPTH}
    assert f"deeper than {DEPTH} levels" in error["message"]
    # A bracket inside a string is text, not nesting.
    text = json.dumps({"model": "m", "prompt": "[" * 1000 + '"\\]'})
    passed = client.post("/api/v1/inference/generate", data=text, content_type="application/json")
    assert passed.status_code == 401  # through the gate, to the view's authentication
    ollama = client.post("/api/chat", data=BAD_BODIES["nul_deep"][0])
    assert ollama.get_json() == {
        "error": "The value at body.messages.0.content contains a NUL character."
    }


def test_not_json_is_left_to_each_route_as_before(client: FlaskClient) -> None:
    """The gate refuses what parses; what does not parse answers as each route always did."""
    native = client.post("/api/v1/auth/login", data="{", content_type="application/json")
    assert native.get_json()["error"]["code"] == "invalid_json"
    headers = auth_headers(client, make_user())
    ollama = client.post("/api/generate", data="{", headers=headers)
    assert ollama.status_code == 400
    assert ollama.get_json() == {"error": "invalid JSON body"}


IMAGE = base64.b64encode(b"\x89PNG" + b"\x00" * (1024 * 1024 - 4)).decode()  # a 1 MB image


def _history(image_field: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    """200 messages, turn by turn, the last with a 1 MB image."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief. " * 50}]
    for turn in range(199):
        role = "user" if turn % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"Turn {turn}: " + "words " * 200})
    messages[-1] = {"role": "user", **image_field(len(messages))}
    return messages


def test_a_large_real_chat_gets_through_the_default_limits(
    app_factory: Callable[..., Flask],
) -> None:
    """The default limits (64 levels, 16 Mi characters, 10,000 items) let a long chat with a
    1 MB image through to validation and the queue on the native API and both doors."""
    app = app_factory(queue_while_unavailable=True)
    client = app.test_client()
    headers = auth_headers(client, make_user(Role.USER))
    native = client.post(
        "/api/v1/inference/chat",
        json={
            "model": "m",
            "messages": _history(lambda _: {"content": "What is this?", "images": [IMAGE]}),
        },
        headers=headers,
    )
    assert native.status_code == 202, native.get_json()
    # The doors stream their answer: the accepted job's answer starts at once.
    ollama = client.post(
        "/api/chat",
        json={
            "model": "m",
            "stream": True,
            "messages": _history(lambda _: {"content": "What is this?", "images": [IMAGE]}),
        },
        headers=headers,
        buffered=False,
    )
    assert ollama.status_code == 200, ollama.get_data(as_text=True)[:300]
    ollama.close()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}}
    openai = client.post(
        "/v1/chat/completions",
        json={
            "model": "m",
            "stream": True,
            "messages": _history(lambda _: {"content": [{"type": "text", "text": "What?"}, part]}),
        },
        headers=headers,
        buffered=False,
    )
    assert openai.status_code == 200, openai.get_data(as_text=True)[:300]
    openai.close()
