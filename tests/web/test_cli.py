"""Operator CLI: create-admin and the migration commands."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Role, User
from tests.factories import UserFactory
from web.security.passwords import verify_password

PASSWORD = "a-long-unusual-passphrase"


def _admin(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def test_create_admin_reads_the_password_from_stdin(app: Flask, db_session: Session) -> None:
    result = app.test_cli_runner().invoke(
        args=[
            "create-admin",
            "--username",
            "boss",
            "--email",
            "boss@example.com",
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
    )

    assert result.exit_code == 0, result.output
    assert "created admin boss" in result.output
    admin = _admin(db_session, "boss")
    assert admin is not None
    assert admin.role == Role.ADMIN
    assert verify_password(PASSWORD, admin.password_hash)


def test_create_admin_falls_back_to_settings(app: Flask, db_session: Session) -> None:
    settings = app.extensions["settings"]
    app.extensions["settings"] = settings.model_copy(
        update={
            "admin_username": "envboss",
            "admin_email": "env@example.com",
            "admin_password": PASSWORD,
        }
    )
    try:
        result = app.test_cli_runner().invoke(args=["create-admin"])
    finally:
        app.extensions["settings"] = settings
    assert result.exit_code == 0, result.output
    assert _admin(db_session, "envboss") is not None


def test_weak_password_is_refused_and_nothing_is_written(app: Flask, db_session: Session) -> None:
    result = app.test_cli_runner().invoke(
        args=[
            "create-admin",
            "--username",
            "weak",
            "--email",
            "weak@example.com",
            "--password",
            "password123",
        ],
    )
    assert result.exit_code == 2
    assert "too common" in result.output
    assert _admin(db_session, "weak") is None


def test_existing_username_is_an_error_unless_exists_ok(app: Flask, db_session: Session) -> None:
    UserFactory(username="taken", role=Role.ADMIN)
    args = [
        "create-admin",
        "--username",
        "taken",
        "--email",
        "other@example.com",
        "--password",
        PASSWORD,
    ]

    refused = app.test_cli_runner().invoke(args=args)
    accepted = app.test_cli_runner().invoke(args=[*args, "--exists-ok"])

    assert refused.exit_code == 1
    assert "username already exists" in refused.output
    assert accepted.exit_code == 0
    assert "already exists" in accepted.output


def test_db_check_reports_no_drift(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output
    assert "models and migrations agree" in result.output


def test_db_create_leaves_an_existing_database_alone(app: Flask) -> None:
    # The creating branch runs at every session start: the harness recreates the test database.
    result = app.test_cli_runner().invoke(args=["db", "create"])
    assert result.exit_code == 0, result.output
    assert "database already exists" in result.output
