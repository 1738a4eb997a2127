"""The web process as it runs in production: gunicorn with gevent workers, over real HTTP."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.conftest import LiveServer, start_live_server, stop_live_server


def test_ready_over_http(live_server: LiveServer) -> None:
    response = requests.get(f"{live_server.url}/health/ready", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_unknown_route_is_json_404_with_request_id(live_server: LiveServer) -> None:
    response = requests.get(
        f"{live_server.url}/api/v1/nothing-here", headers={"X-Request-ID": "live-404"}, timeout=5
    )
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"
    assert response.headers["X-Request-ID"] == "live-404"


def test_form_post_is_json_415(live_server: LiveServer) -> None:
    response = requests.post(f"{live_server.url}/api/v1/auth/login", data={"a": "b"}, timeout=5)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_oversized_body_is_refused_before_it_is_read(live_server: LiveServer) -> None:
    address = urlsplit(live_server.url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as connection:
        connection.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 40000000\r\nConnection: close\r\n\r\n{"
        )
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_every_log_line_is_json_and_requests_carry_their_id(live_server: LiveServer) -> None:
    requests.get(f"{live_server.url}/health", headers={"X-Request-ID": "live-log"}, timeout=5)

    records = [json.loads(line) for line in live_server.log_lines() if line.strip()]
    access = [r for r in records if r.get("request_id") == "live-log"]
    assert access
    assert access[0]["logger"] == "ollamamax.access"
    assert access[0]["status"] == 200


def test_gunicorn_serves_tls_directly_when_given_a_certificate(
    settings_overrides: dict[str, Any], tmp_path: Path
) -> None:
    server = start_live_server(settings_overrides, tmp_path, tls=True)
    try:
        answer = requests.get(f"{server.url}/health", verify=server.certificate, timeout=3)
        assert server.url.startswith("https://")
        assert answer.status_code == 200
    finally:
        stop_live_server(server)
