"""Helpers for tests that act as users: make accounts, log in, build headers."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from db.models import AuditLogEntry, Role, User
from tests.factories import TEST_PASSWORD, UserFactory


def make_user(role: Role | str = Role.USER, **fields: Any) -> User:
    return UserFactory(role=role, **fields)  # type: ignore[no-any-return]


def login(client: FlaskClient, user: User, password: str = TEST_PASSWORD) -> dict[str, Any]:
    response = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": password}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth_headers(client: FlaskClient, user: User) -> dict[str, str]:
    return bearer(login(client, user)["access_token"])


def error_code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


def audit_actions(session: Any, user_id: Any = None) -> list[str]:
    query = select(AuditLogEntry.action).order_by(AuditLogEntry.id)
    if user_id is not None:
        query = query.where(AuditLogEntry.user_id == user_id)
    return list(session.scalars(query))
