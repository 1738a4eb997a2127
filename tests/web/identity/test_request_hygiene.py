"""Rate limits, CORS, security headers and trusted proxies."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from flask import Flask, request
from flask.testing import FlaskClient
from flask_limiter import Limiter

from tests.support.identity import auth_headers, bearer, error_code, login, make_user

PROFILE = "/api/v1/users/profile"


def test_429_is_json_with_retry_after_and_limit_headers_then_recovers(
    app_factory: Callable[..., Flask],
) -> None:
    client = app_factory(ratelimit_default="3/second").test_client()
    headers = auth_headers(client, make_user())

    answers = [client.get(PROFILE, headers=headers) for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert error_code(limited) == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert "Retry-After" not in answers[0].headers  # only a refusal says when to retry
    time.sleep(1.1)
    assert client.get(PROFILE, headers=headers).status_code == 200


def test_limits_are_per_user_when_authenticated(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(ratelimit_default="2/minute").test_client()
    alice = bearer(login(client, make_user())["access_token"])
    bob = bearer(login(client, make_user())["access_token"])
    for _ in range(2):
        client.get(PROFILE, headers=alice)
    assert client.get(PROFILE, headers=alice).status_code == 429
    assert client.get(PROFILE, headers=bob).status_code == 200  # same IP, own budget


def test_login_has_its_own_stricter_limit_by_ip(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(ratelimit_login="2/minute").test_client()
    body = {"username": "nobody", "password": "whatever-it-is"}
    answers = [client.post("/api/v1/auth/login", json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 429]
    # The strict limit's headers, not the caller's budget's (the budget allows 10000).
    assert [a.headers["X-RateLimit-Limit"] for a in answers] == ["2", "2", "2"]
    assert answers[1].headers["X-RateLimit-Remaining"] == "0"


def test_flask_limiter_sees_only_the_requests_it_limits(
    app_factory: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its hooks run for the auth blueprint's routes alone (login and registration carry
    its limits): elsewhere they found no limit to apply, at a cost on every request
    (web/security/ratelimit.py)."""
    looked_up: list[str | None] = []
    identify = Limiter.identify_request

    def counted(self: Limiter) -> str:
        looked_up.append(request.endpoint)
        return identify(self)

    monkeypatch.setattr(Limiter, "identify_request", counted)
    client = app_factory().test_client()
    headers = auth_headers(client, make_user())
    looked_up.clear()

    assert client.get(PROFILE, headers=headers).status_code == 200
    assert client.get("/health").status_code == 200
    assert looked_up == []
    client.post("/api/v1/auth/login", json={"username": "nobody", "password": "whatever-it-is"})
    assert set(looked_up) == {"auth.login"}


def test_with_rate_limits_off_nothing_is_counted(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(ratelimit_enabled=False, ratelimit_login="1/minute").test_client()
    body = {"username": "nobody", "password": "whatever-it-is"}
    answers = [client.post("/api/v1/auth/login", json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert "X-RateLimit-Limit" not in answers[-1].headers


def test_cors_is_off_unless_origins_are_configured(client: FlaskClient) -> None:
    response = client.options(
        PROFILE, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_preflight_for_a_configured_origin(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(cors_origins=["https://console.example"]).test_client()
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }

    allowed = client.options(PROFILE, headers={"Origin": "https://console.example", **preflight})
    refused = client.options(PROFILE, headers={"Origin": "https://evil.example", **preflight})

    assert allowed.headers["Access-Control-Allow-Origin"] == "https://console.example"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_a_wildcard_origin_never_comes_with_credentials(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(cors_origins=["*"]).test_client()
    response = client.get("/health", headers={"Origin": "https://anywhere.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_security_headers_on_every_answer(client: FlaskClient) -> None:
    for response in (client.get("/health"), client.get("/missing")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert "Strict-Transport-Security" not in response.headers  # plain HTTP here


def test_forwarded_headers_count_only_from_trusted_proxies(
    app_factory: Callable[..., Flask],
) -> None:
    client = app_factory(trusted_proxies=["10.0.0.0/8"]).test_client()
    user = make_user()
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}

    def session_ip(remote: str) -> tuple[str, dict[str, str]]:
        response = client.post(
            "/api/v1/auth/login",
            headers=forwarded,
            json={"username": user.username, "password": "correct-horse-battery"},
            environ_base={"REMOTE_ADDR": remote},
        )
        token = response.get_json()["access_token"]
        sessions = client.get("/api/v1/users/sessions", headers=bearer(token)).get_json()
        [current] = [s for s in sessions["items"] if s["current"]]
        return current["ip_address"], dict(response.headers)

    via_proxy, proxy_headers = session_ip("10.1.2.3")
    direct, direct_headers = session_ip("198.51.100.7")

    assert via_proxy == "203.0.113.9"
    assert "Strict-Transport-Security" in proxy_headers  # the proxy said HTTPS
    assert direct == "198.51.100.7"  # a direct client cannot claim another address
    assert "Strict-Transport-Security" not in direct_headers


def test_the_default_limit_is_one_budget_across_routes(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(ratelimit_default="3/minute").test_client()
    headers = auth_headers(client, make_user())
    paths = [PROFILE, "/api/v1/users/sessions", "/api/v1/users/api-keys", PROFILE]
    assert [client.get(p, headers=headers).status_code for p in paths] == [200, 200, 200, 429]
