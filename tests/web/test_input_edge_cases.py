"""Inputs at the edges get an answer in the contract, never a 500: time offsets and dates
PostgreSQL cannot hold, names too long once tagged, NUL characters, absurd nesting and page
numbers, paths no route takes. Many were found by schemathesis (tests/web/test_openapi_fuzz.py)
and are kept here as plain tests."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from db.models import Role
from tests.support.identity import auth_headers, error_code, make_user


@pytest.mark.parametrize("path", ["/api/v1/inference/requests", "/api/v1/system/audit"])
def test_time_offsets_postgresql_refuses_are_moved_to_utc(client: FlaskClient, path: str) -> None:
    """Python takes offsets up to 23:59, PostgreSQL only up to 15:59."""
    headers = auth_headers(client, make_user(Role.ADMIN))
    response = client.get(f"{path}?since=2030-08-19T06:45:41%2B23:55", headers=headers)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("bound", ["0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00"])
def test_times_that_leave_the_calendar_in_utc_are_refused(client: FlaskClient, bound: str) -> None:
    headers = auth_headers(client, make_user(Role.ADMIN))
    response = client.get(f"/api/v1/inference/requests?until={bound}", headers=headers)
    assert response.status_code == 422
    assert response.get_json()["error"]["details"][0]["field"] == "query.until"


def test_a_model_name_must_fit_with_its_tag(client: FlaskClient) -> None:
    """An untagged name is stored as name:latest, in a 255-character column."""
    headers = auth_headers(client, make_user(Role.OPERATOR))
    longest = "m" * (255 - len(":latest"))
    too_long = client.post("/api/v1/models/", json={"name": longest + "m"}, headers=headers)
    assert too_long.status_code == 422
    assert error_code(too_long) == "validation_error"
    assert (
        client.post("/api/v1/models/", json={"name": longest}, headers=headers).status_code == 201
    )
    tagged = client.post("/api/v1/models/", json={"name": "t" * 250 + ":v1"}, headers=headers)
    assert tagged.status_code == 201
    job = client.post(
        "/api/v1/inference/generate", json={"model": "x" * 255, "prompt": "hi"}, headers=headers
    )
    assert job.status_code == 422


@pytest.mark.parametrize("path", ["/v1/models/a%0Ab", "/v1/no-such-endpoint"])
def test_a_path_no_route_takes_under_v1_answers_in_openais_shape(
    client: FlaskClient, path: str
) -> None:
    """Routing refuses a model id with a newline before any blueprint sees the request."""
    response = client.get(path, headers=auth_headers(client, make_user()))
    assert response.status_code == 404
    assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}
    elsewhere = client.get("/api/v1/no-such-endpoint")
    assert error_code(elsewhere) == "not_found"  # our own error object outside /v1/


def test_a_wrong_method_under_v1_answers_in_openais_shape(client: FlaskClient) -> None:
    response = client.get("/v1/chat/completions", headers=auth_headers(client, make_user()))
    assert response.status_code == 405
    assert response.headers["Allow"]
    assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/auth/login", {"username": "a\x00b", "password": "xxxxxxxxxx"}),
        (
            "/api/v1/auth/register",
            {"username": "abc", "email": "a@example.com", "password": "x\x00" * 6},
        ),
    ],
)
def test_nul_characters_are_a_400(client: FlaskClient, path: str, body: dict[str, str]) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert error_code(response) == "invalid_characters"


OLLAMA_CALL = {"function": {"name": "f", "arguments": {"k": "a\x00b"}}}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        # Found by the fuzzer: a NUL deep in a tool call's arguments reached the JSONB insert.
        ("/api/chat", {"role": "assistant", "content": "", "tool_calls": [OLLAMA_CALL]}),
        ("/v1/chat/completions", {"role": "user", "content": "a\x00b"}),
    ],
)
def test_nul_characters_in_a_doors_body_are_a_400(
    client: FlaskClient, path: str, message: dict[str, Any]
) -> None:
    response = client.post(
        path,
        json={"model": "m", "messages": [message], "stream": False},
        headers=auth_headers(client, make_user()),
    )
    assert response.status_code == 400
    assert "NUL character" in response.get_data(as_text=True)


def test_nul_in_a_query_and_a_huge_page_are_4xx(client: FlaskClient) -> None:
    admin = auth_headers(client, make_user(Role.ADMIN))
    assert client.get("/api/v1/users?q=a%00b", headers=admin).status_code == 400
    assert client.get("/api/v1/users?page=999999999999999999", headers=admin).status_code == 422


def test_absurdly_nested_json_is_a_400(client: FlaskClient) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/api/v1/auth/login", data=body, content_type="application/json")
    assert response.status_code == 400
