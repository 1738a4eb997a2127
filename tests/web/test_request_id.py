"""X-Request-ID: accepted when safe, generated otherwise, returned, and on every log line."""

from __future__ import annotations

import json
import logging
import re

import pytest
from flask.testing import FlaskClient

from config.logging import build_formatter


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
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ollamamax.access")
    client.get("/health", headers={"X-Request-ID": "log-me"})

    [record] = [r for r in caplog.records if r.name == "ollamamax.access"]
    line = json.loads(build_formatter("json").format(record))
    assert line["request_id"] == "log-me"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/health", 200)
    assert line["duration_ms"] >= 0
