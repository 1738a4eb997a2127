"""X-Request-ID: accepted when safe, generated otherwise, returned, and on every log line."""

from __future__ import annotations

import json
import re

import pytest
from flask.testing import FlaskClient


def test_generated_when_absent(client: FlaskClient) -> None:
    request_id = client.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)


def test_caller_id_is_echoed(client: FlaskClient) -> None:
    response = client.get("/health", headers={"X-Request-ID": "edge-7f3a.1:2"})
    assert response.headers["X-Request-ID"] == "edge-7f3a.1:2"


@pytest.mark.parametrize("unsafe", ["has space", "x" * 129, "semi;colon", "<script>"])
def test_unsafe_caller_id_is_replaced(client: FlaskClient, unsafe: str) -> None:
    response = client.get("/health", headers={"X-Request-ID": unsafe})
    assert response.headers["X-Request-ID"] != unsafe
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_errors_carry_the_id_too(client: FlaskClient) -> None:
    response = client.get("/nowhere", headers={"X-Request-ID": "lost-1"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "lost-1"


def test_access_log_line_is_structured_with_the_id(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.get("/health", headers={"X-Request-ID": "log-me"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    [access] = [line for line in lines if line.get("request_id") == "log-me"]
    assert access["logger"] == "ollamamax.access"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/health", 200)
    assert access["duration_ms"] >= 0
