"""The front doors read a JSON body whatever its Content-Type, as Ollama's and OpenAI's
servers do: `curl -d '{...}'` sends application/x-www-form-urlencoded, other clients
text/plain or nothing. Our own /api/v1 still refuses a body not sent as JSON (415).

Each door route that takes a body is sent the same bytes as a curl-like raw request with no
Content-Type, text/plain and application/x-www-form-urlencoded, and must answer exactly as
it does with application/json: an answer that depends on the body (a model's name, a
missing field) shows the body was read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from db.models import ModelStatus, Node, NodeStatus, Role
from tests.factories import ModelReplicaFactory
from tests.support.identity import auth_headers, make_user

CONTENT_TYPES = (None, "text/plain", "application/x-www-form-urlencoded")
MODEL = "door-body:latest"
UNKNOWN = "no-such-model:latest"

# Every door route that reads a body, and a body whose answer shows it was read.
DOOR_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/generate"): {"model": MODEL},  # a load request: 200 done_reason load
    ("POST", "/api/chat"): {"model": MODEL, "messages": []},  # likewise
    ("POST", "/api/show"): {"model": MODEL},  # 200, or 404 had the name not been read
    ("POST", "/api/embed"): {"model": MODEL, "input": []},  # 200 no vectors (no job)
    ("POST", "/api/embeddings"): {"model": UNKNOWN, "prompt": ""},  # 404 naming it
    ("POST", "/v1/embeddings"): {"model": UNKNOWN, "input": "hi"},  # 404 model_not_found
    ("POST", "/api/pull"): {"model": UNKNOWN, "stream": False},  # 409: no Ollama node here
    ("DELETE", "/api/delete"): {"model": UNKNOWN},  # 404 model 'no-such-model:latest'...
    ("POST", "/v1/chat/completions"): {
        "model": UNKNOWN,
        "messages": [{"role": "user", "content": "hi"}],
    },  # 404 model_not_found naming it
    ("POST", "/v1/completions"): {"model": UNKNOWN, "prompt": "hi"},
}
# Routes that refuse whatever the body says: still never a 415.
REFUSED = (
    "/api/copy",
    "/api/create",
    "/api/push",
    f"/api/blobs/sha256:{'0' * 64}",
)


@pytest.fixture
def headers(client: FlaskClient, db_session: Session) -> dict[str, str]:
    db_session.execute(update(Node).values(status=NodeStatus.OFFLINE))  # no node can pull
    ModelReplicaFactory(
        model__name=MODEL, model__status=ModelStatus.AVAILABLE, node__status=NodeStatus.OFFLINE
    )
    return auth_headers(client, make_user(Role.OPERATOR))


def _send(
    client: FlaskClient,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    content_type: str | None,
) -> Any:
    """The bytes as curl sends them, with exactly the Content-Type given (or none)."""
    sent = {**headers, **({"Content-Type": content_type} if content_type else {})}
    response = client.open(path, method=method, data=json.dumps(body).encode(), headers=sent)
    assert response.request.headers.get("Content-Type") == content_type  # as curl would send
    return response


@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=str)
@pytest.mark.parametrize(("method", "path"), sorted(DOOR_BODIES))
def test_a_door_reads_json_whatever_the_content_type(
    client: FlaskClient,
    headers: dict[str, str],
    method: str,
    path: str,
    content_type: str | None,
) -> None:
    body = DOOR_BODIES[(method, path)]
    as_json = _send(client, method, path, body, headers, "application/json")
    as_sent = _send(client, method, path, body, headers, content_type)

    assert as_sent.status_code != 415
    assert as_sent.status_code == as_json.status_code, as_sent.get_data(as_text=True)
    assert _without_times(as_sent.get_json()) == _without_times(as_json.get_json())
    if as_sent.status_code >= 400:  # the answer names what the body asked for
        assert "no-such-model" in as_sent.get_data(as_text=True)
    elif path == "/api/show":
        assert as_sent.get_json()["details"] is not None
    elif path == "/api/embed":
        assert as_sent.get_json() == {"model": MODEL, "embeddings": []}
    else:
        assert as_sent.get_json()["done_reason"] == "load"


def _without_times(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _without_times(v) for k, v in body.items() if k not in ("created_at",)}
    return body


@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=str)
@pytest.mark.parametrize("path", REFUSED)
def test_a_door_refusal_is_never_a_415(
    client: FlaskClient, headers: dict[str, str], path: str, content_type: str | None
) -> None:
    response = _send(client, "POST", path, {"model": MODEL}, headers, content_type)
    assert response.status_code == 400
    assert " not s" in response.get_json()["error"]  # not supported, not served


@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=str)
def test_a_bad_body_is_still_the_doors_400(
    client: FlaskClient, headers: dict[str, str], content_type: str | None
) -> None:
    sent = {**headers, **({"Content-Type": content_type} if content_type else {})}
    ollama = client.post("/api/show", data=b"model=llama3.2", headers=sent)
    assert (ollama.status_code, ollama.get_json()) == (400, {"error": "invalid JSON body"})
    openai = client.post("/v1/chat/completions", data=b"", headers=sent)
    assert openai.status_code == 400
    assert openai.get_json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=str)
def test_our_own_api_still_wants_json(
    app: Flask, client: FlaskClient, headers: dict[str, str], content_type: str | None
) -> None:
    body = {"model": MODEL, "prompt": "hi"}
    response = _send(client, "POST", "/api/v1/inference/generate", body, headers, content_type)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
