"""Inputs that schemathesis (tests/web/test_openapi_fuzz.py) found answered with a 500 or
off the document, kept here as plain regression tests."""

from __future__ import annotations

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
