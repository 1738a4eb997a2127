"""Races, against the real server (gunicorn, separate connections, real row locks): parallel
guesses cannot get past the lockout, and a session revoked while it refreshes stays dead."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests
from sqlalchemy import select

from db.models import AuditLogEntry
from db.session import Database
from tests.conftest import LiveServer, make_committed_user
from tests.factories import TEST_PASSWORD
from tests.support.identity import bearer

PROFILE = "/api/v1/users/profile"


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
