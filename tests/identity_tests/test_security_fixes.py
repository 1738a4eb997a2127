"""Regressions found in review: races, enumeration, key lifetime, bad input, erasure."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditLogEntry, Role
from db.session import Database
from tests.conftest import LiveServer, make_committed_user
from tests.factories import TEST_PASSWORD
from tests.support.identity import auth_headers, bearer, error_code, login, make_user

PROFILE = "/api/v1/users/profile"
KEYS = "/api/v1/users/api-keys"


def test_an_unknown_login_locks_like_a_real_one(client: FlaskClient) -> None:
    body = {"username": "nobody-here", "password": "wrong-password!"}
    statuses = [client.post("/api/v1/auth/login", json=body).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]  # same as test_five_failures_lock_the_account


def test_an_admin_can_unlock_an_account(client: FlaskClient) -> None:
    user = make_user()
    for _ in range(5):
        client.post(
            "/api/v1/auth/login", json={"username": user.username, "password": "nope-nope!"}
        )
    admin = auth_headers(client, make_user(Role.ADMIN))
    assert (
        client.put(f"/api/v1/users/{user.id}", headers=admin, json={"unlock": True}).status_code
        == 200
    )
    login(client, user)


def test_creating_a_key_needs_the_password(client: FlaskClient) -> None:
    headers = auth_headers(client, make_user())
    response = client.post(
        KEYS,
        headers=headers,
        json={"name": "k", "scopes": ["admin"], "current_password": "guess-1234"},
    )
    assert response.status_code == 401
    assert (
        client.post(KEYS, headers=headers, json={"name": "k", "scopes": ["admin"]}).status_code
        == 422
    )


def _key(client: FlaskClient, headers: dict[str, str]) -> str:
    body = {"name": "k", "scopes": ["admin"], "current_password": TEST_PASSWORD}
    return str(client.post(KEYS, headers=headers, json=body).get_json()["key"])


def test_a_password_change_revokes_api_keys(client: FlaskClient) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    key = _key(client, headers)
    client.put(
        PROFILE,
        headers=headers,
        json={"current_password": TEST_PASSWORD, "new_password": "another long passphrase"},
    )
    assert client.get(PROFILE, headers=bearer(key)).status_code == 401


def test_disabling_ends_refresh_tokens_and_keys_for_good(client: FlaskClient) -> None:
    user = make_user()
    tokens = login(client, user)
    key = _key(client, bearer(tokens["access_token"]))
    admin = auth_headers(client, make_user(Role.ADMIN))

    client.put(f"/api/v1/users/{user.id}", headers=admin, json={"is_active": False})
    client.put(f"/api/v1/users/{user.id}", headers=admin, json={"is_active": True})

    # Re-enabled, but nothing issued before the disable works again.
    refresh = client.post("/api/v1/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert refresh.status_code == 401
    assert client.get(PROFILE, headers=bearer(key)).status_code == 401


def test_a_password_change_ends_the_other_refresh_tokens(client: FlaskClient) -> None:
    user = make_user()
    other = login(client, user)
    current = bearer(login(client, user)["access_token"])
    client.put(
        PROFILE,
        headers=current,
        json={"current_password": TEST_PASSWORD, "new_password": "another long passphrase"},
    )
    assert (
        client.post("/api/v1/auth/refresh", headers=bearer(other["refresh_token"])).status_code
        == 401
    )


def test_erasure_scrubs_name_and_email_from_the_audit_trail(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    email = user.email
    headers = auth_headers(client, user)
    client.delete("/api/v1/users/me", headers=headers, json={"password": TEST_PASSWORD})
    entries = db_session.scalars(
        select(AuditLogEntry).where(
            AuditLogEntry.resource_type == "users", AuditLogEntry.resource_id == str(user.id)
        )
    ).all()
    assert entries
    assert email not in str([entry.details for entry in entries])


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


def test_nul_in_a_query_and_a_huge_page_are_4xx(client: FlaskClient) -> None:
    admin = auth_headers(client, make_user(Role.ADMIN))
    assert client.get("/api/v1/users?q=a%00b", headers=admin).status_code == 400
    assert client.get("/api/v1/users?page=999999999999999999", headers=admin).status_code == 422


def test_absurdly_nested_json_is_a_400(client: FlaskClient) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/api/v1/auth/login", data=body, content_type="application/json")
    assert response.status_code == 400


def test_the_bearer_scheme_is_case_insensitive(client: FlaskClient) -> None:
    token = login(client, make_user())["access_token"]
    assert client.get(PROFILE, headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_emails_compare_the_way_they_are_stored(client: FlaskClient) -> None:
    body = {"username": "dotted", "email": "İnfo@example.com", "password": "plenty-long-pass"}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    response = client.post(
        "/api/v1/auth/login", json={"username": "İnfo@example.com", "password": "plenty-long-pass"}
    )
    assert response.status_code == 200
    clash = client.post(
        "/api/v1/auth/register", json={**body, "username": "other", "email": "İNFO@example.com"}
    )
    assert clash.status_code == 409


def test_the_default_limit_is_one_budget_across_routes(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(ratelimit_default="3/minute").test_client()
    headers = auth_headers(client, make_user())
    paths = [PROFILE, "/api/v1/users/sessions", KEYS, PROFILE]
    assert [client.get(p, headers=headers).status_code for p in paths] == [200, 200, 200, 429]


# --- races, against the real server: separate connections, real locks ---------------------


def _live_login(
    server: LiveServer, username: str, password: str = TEST_PASSWORD
) -> requests.Response:
    return requests.post(
        f"{server.url}/api/v1/auth/login",
        json={"username": username, "password": password},
        timeout=30,
    )


def _in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_parallel_guesses_cannot_get_past_the_lockout(
    live_server: LiveServer, committed: Database
) -> None:
    user = make_committed_user(committed)
    guesses = [lambda: _live_login(live_server, user.username, "wrong-password!")] * 9
    guesses.append(lambda: _live_login(live_server, user.username))
    _in_parallel(guesses)

    # Logins to one account take turns (row lock), so the audit trail is their real order:
    # once the account is locked, no login succeeds, not even with the right password.
    with committed.unit_of_work() as session:
        actions = list(
            session.scalars(
                select(AuditLogEntry.action)
                .where(AuditLogEntry.user_id == user.id, AuditLogEntry.action.like("auth.%"))
                .order_by(AuditLogEntry.id)
            )
        )
    assert "auth.lockout" in actions
    assert "auth.login" not in actions[actions.index("auth.lockout") :]
    assert _live_login(live_server, user.username).status_code == 429


def _race_refresh_against_revocation(server: LiveServer, username: str) -> None:
    victim = _live_login(server, username).json()
    mine = _live_login(server, username).json()
    my_headers = bearer(mine["access_token"])
    sessions = requests.get(
        f"{server.url}/api/v1/users/sessions", headers=my_headers, timeout=10
    ).json()["items"]
    [target] = [s for s in sessions if not s["current"] and s["id"]]

    def refresh() -> requests.Response:
        return requests.post(
            f"{server.url}/api/v1/auth/refresh", headers=bearer(victim["refresh_token"]), timeout=30
        )

    def end() -> requests.Response:
        return requests.delete(
            f"{server.url}/api/v1/users/sessions/{target['id']}", headers=my_headers, timeout=30
        )

    refreshed, ended = _in_parallel([refresh, end])
    assert ended.status_code == 204
    if refreshed.status_code == 200:  # the refresh won the race: its new tokens must be dead
        fresh = refreshed.json()
        again = requests.post(
            f"{server.url}/api/v1/auth/refresh", headers=bearer(fresh["refresh_token"]), timeout=10
        )
        used = requests.get(
            f"{server.url}{PROFILE}", headers=bearer(fresh["access_token"]), timeout=10
        )
        assert (again.status_code, used.status_code) == (401, 401)
    else:
        assert refreshed.status_code == 401
    requests.post(f"{server.url}/api/v1/users/logout", headers=my_headers, timeout=10)


def test_revoking_a_session_while_it_refreshes_leaves_nothing_alive(
    live_server: LiveServer, committed: Database
) -> None:
    user = make_committed_user(committed)
    for _ in range(8):  # before the fix, about half of these races left a live session
        _race_refresh_against_revocation(live_server, user.username)
