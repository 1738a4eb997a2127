"""Liveness and readiness against the real dependencies, and with one taken away."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support.rabbitmq import add_vhost, amqp_url, delete_vhost, unavailable_reason
from web import create_app

CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"


def test_liveness_touches_nothing(settings_overrides: dict[str, Any]) -> None:
    app = create_app(
        {
            **settings_overrides,
            "database_url": "postgresql://nobody@127.0.0.1:1/x",
            "redis_url": CLOSED_PORT_REDIS,
        }
    )
    response = app.test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_when_every_dependency_answers(client: FlaskClient) -> None:
    response = client.get("/health/ready")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"postgres", "redis", "broker"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert check["latency_ms"] >= 0


def test_503_names_redis_when_it_is_unreachable(settings_overrides: dict[str, Any]) -> None:
    # The broker lives on the same Redis unless configured apart, so both fail.
    app = create_app({**settings_overrides, "redis_url": CLOSED_PORT_REDIS})
    response = app.test_client().get("/health/ready")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["postgres"]["ok"] is True
    assert body["checks"]["redis"] == {
        "ok": False,
        "latency_ms": body["checks"]["redis"]["latency_ms"],
        "error": "ConnectionError",
    }
    assert body["error"]["code"] == "dependency_unavailable"
    assert body["error"]["details"] == {"failed": ["broker", "redis"]}
    assert "redis" in body["error"]["message"]


def test_503_names_only_the_broker_when_only_it_is_down(settings_overrides: dict[str, Any]) -> None:
    app = create_app({**settings_overrides, "celery_broker_url": CLOSED_PORT_REDIS})
    body = app.test_client().get("/health/ready").get_json()
    assert body["error"]["details"] == {"failed": ["broker"]}


def test_503_names_postgres_when_it_is_unreachable(settings_overrides: dict[str, Any]) -> None:
    app = create_app(
        {**settings_overrides, "database_url": "postgresql+psycopg2://postgres@127.0.0.1:1/x"}
    )
    response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["error"]["details"] == {"failed": ["postgres"]}


def test_a_hanging_dependency_times_out_instead_of_hanging_the_probe(
    settings_overrides: dict[str, Any],
) -> None:
    # A socket that completes the TCP handshake (the kernel does) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        app = create_app(
            {
                **settings_overrides,
                "database_url": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x",
                "health_check_timeout_s": 0.5,
            }
        )
        started = time.monotonic()
        response = app.test_client().get("/health/ready")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.get_json()["checks"]["postgres"]["error"] == "Timeout"
    assert response.get_json()["checks"]["redis"]["ok"] is True
    assert elapsed < 3  # generous: the point is "not the 5 s connect timeout, not forever"


def test_ready_and_not_ready_on_a_rabbitmq_broker(
    settings_overrides: dict[str, Any], redis_client: Any
) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"RabbitMQ: {reason}")
    vhost = add_vhost()
    try:
        app = create_app({**settings_overrides, "celery_broker_url": amqp_url(vhost)})
        body = app.test_client().get("/health/ready").get_json()
        assert body["checks"]["broker"]["ok"] is True
    finally:
        delete_vhost(vhost)
    # A vhost nobody may use: the broker refuses the login, and readiness says so.
    closed = create_app({**settings_overrides, "celery_broker_url": amqp_url(vhost)})
    body = closed.test_client().get("/health/ready").get_json()
    assert body["error"]["details"] == {"failed": ["broker"]}


def test_a_silent_rabbitmq_broker_times_out(settings_overrides: dict[str, Any]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        app = create_app(
            {
                **settings_overrides,
                "celery_broker_url": f"amqp://guest:guest@127.0.0.1:{port}//",
                "health_check_timeout_s": 0.5,
            }
        )
        body = app.test_client().get("/health/ready").get_json()
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["redis"]["ok"] is True
