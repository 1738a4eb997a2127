"""Operator commands: `flask --app wsgi create-admin` and `flask --app wsgi db ...`."""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import with_appcontext
from pydantic import ValidationError

from db import migrate
from db.models import Role
from db.session import set_audit_context
from db.users import UserExistsError, create_user, find_by_login
from web.database import get_db
from web.errors import validation_details
from web.extensions import current_settings
from web.schemas.users import UserCreate
from web.security.passwords import hash_password


def _database_url() -> str:
    return current_settings().database_url


@click.command("create-admin")
@click.option("--username", help="Defaults to ADMIN_USERNAME.")
@click.option("--email", help="Defaults to ADMIN_EMAIL.")
@click.option("--password", help="Visible in the process list: prefer --password-stdin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--exists-ok", is_flag=True, help="Succeed quietly if this admin already exists.")
@with_appcontext
def create_admin(
    username: str | None,
    email: str | None,
    password: str | None,
    password_stdin: bool,
    exists_ok: bool,
) -> None:
    """Create an admin account without going through the API."""
    settings = current_settings()
    username = username or settings.admin_username
    email = email or settings.admin_email
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    password = password or settings.admin_password
    if not username or not email:
        raise click.UsageError("give --username and --email (or ADMIN_USERNAME, ADMIN_EMAIL)")
    if not password:
        if not sys.stdin.isatty():
            raise click.UsageError("no password: use --password-stdin or ADMIN_PASSWORD")
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)

    try:
        account = UserCreate(username=username, email=email, password=password)
    except ValidationError as error:
        for problem in validation_details(error, prefix="admin"):
            click.echo(f"{problem['field']}: {problem['message']}", err=True)
        raise SystemExit(2) from None

    with get_db().unit_of_work() as session:
        set_audit_context(session, user_agent="cli:create-admin")
        try:
            user = create_user(
                session=session,
                username=account.username,
                email=account.email,
                password_hash=hash_password(account.password, settings.bcrypt_rounds),
                role=Role.ADMIN,
            )
        except UserExistsError as error:
            existing = find_by_login(session=session, login=account.username)
            if exists_ok and existing is not None and existing.role == Role.ADMIN:
                click.echo(f"admin {account.username} already exists")
                return
            raise click.ClickException(str(error)) from None
        click.echo(f"created admin {user.username} ({user.id})")


@click.group("db")
def db_group() -> None:
    """Database migrations (Alembic, scripts in db/migrations)."""


@db_group.command("create")
@with_appcontext
def db_create() -> None:
    """Create the database DATABASE_URL names, if it does not exist yet."""
    created = migrate.create_database(_database_url())
    click.echo("database created" if created else "database already exists")


@db_group.command("upgrade")
@click.argument("revision", default="head")
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Migrate up to REVISION (default: head)."""
    migrate.upgrade(_database_url(), revision)


@db_group.command("downgrade")
@click.argument("revision")
@with_appcontext
def db_downgrade(revision: str) -> None:
    """Migrate down to REVISION ("base" empties the schema)."""
    migrate.downgrade(_database_url(), revision)


@db_group.command("check")
@with_appcontext
def db_check() -> None:
    """Fail if the models and the migrations disagree."""
    migrate.check(_database_url())
    click.echo("models and migrations agree")


@db_group.command("current")
@with_appcontext
def db_current() -> None:
    """Show the revision the database is at."""
    migrate.current(_database_url())


def register(app: Flask) -> None:
    app.cli.add_command(create_admin)
    app.cli.add_command(db_group)
