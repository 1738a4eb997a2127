"""Test harness on real services.

- PostgreSQL: a `<name>_test` database next to the configured one, created and
  migrated once per run. Each test runs inside an outer transaction that is
  rolled back; the app's own commits become savepoints inside it.
- Redis: logical database 15 on the configured server, flushed per test.
- `live_server`: the real web process (gunicorn + gevent) on a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import get_settings
from db import migrate
from db.models import Role, User
from db.session import Database
from tests import factories
from tests.factories import TEST_PASSWORD_HASH
from web import create_app

ROOT = Path(__file__).resolve().parent.parent
# Two suites can run side by side with their own DATABASE_URL and TEST_REDIS_DB.
REDIS_TEST_DB = int(os.environ.get("TEST_REDIS_DB", "15"))


def _test_database_url(suffix: str = "test") -> str:
    url = make_url(get_settings().database_url)
    return url.set(database=f"{url.database}_{suffix}").render_as_string(hide_password=False)


def _test_redis_url() -> str:
    """The configured Redis server, logical database REDIS_TEST_DB (whatever it names)."""
    parts = urlsplit(get_settings().redis_url)
    return urlunsplit(parts._replace(path=f"/{REDIS_TEST_DB}"))


def recreate_database(url: str) -> None:
    migrate.create_database(url, drop_existing=True)


@pytest.fixture(scope="session")
def settings_overrides() -> dict[str, Any]:
    return {
        "app_env": "test",
        "database_url": _test_database_url(),
        "redis_url": _test_redis_url(),
        "log_format": "json",
        "bcrypt_rounds": 4,  # the policy is tested; the cost of 12 rounds is not
        # Limits stay on so every request spends from its caller's budget; tests of the
        # limits themselves build an app with small ones.
        "ratelimit_default": "10000/minute",
        "ratelimit_login": "10000/minute",
        "ratelimit_register": "10000/minute",
    }


@pytest.fixture(scope="session")
def database(settings_overrides: dict[str, Any]) -> Iterator[Database]:
    url = settings_overrides["database_url"]
    recreate_database(url)
    migrate.upgrade(url)
    engine = create_engine(url)
    yield Database(engine, sessionmaker(engine, expire_on_commit=False))
    engine.dispose()


@pytest.fixture
def connection(database: Database) -> Iterator[Connection]:
    """A connection in an outer transaction that is rolled back after the test."""
    with database.engine.connect() as connection:
        transaction = connection.begin()
        yield connection
        if transaction.is_active:
            transaction.rollback()


@pytest.fixture
def session_factory(connection: Connection) -> sessionmaker[Session]:
    return sessionmaker(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )


@pytest.fixture
def db_session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    session = session_factory()
    factories.bind(session)
    yield session
    factories.bind(None)
    session.close()


@pytest.fixture(scope="session")
def base_app(settings_overrides: dict[str, Any], database: Database) -> Flask:
    return create_app(settings_overrides)


@pytest.fixture
def app(
    base_app: Flask,
    connection: Connection,
    session_factory: sessionmaker[Session],
    db_session: Session,
) -> Iterator[Flask]:
    """The app with its unit of work bound to the test's rolled-back transaction."""
    original = base_app.extensions["db"]
    base_app.extensions["db"] = Database(connection.engine, session_factory, autocommit=False)
    yield base_app
    base_app.extensions["db"] = original


@pytest.fixture
def client(app: Flask, redis_client: Redis) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def app_factory(
    settings_overrides: dict[str, Any],
    connection: Connection,
    session_factory: sessionmaker[Session],
    redis_client: Redis,
    db_session: Session,
) -> Callable[..., Flask]:
    """Build an app with extra settings, its unit of work bound to the test's transaction."""

    def build(**overrides: Any) -> Flask:
        app = create_app({**settings_overrides, **overrides})
        app.extensions["db"] = Database(connection.engine, session_factory, autocommit=False)
        return app

    return build


@pytest.fixture
def redis_client(settings_overrides: dict[str, Any]) -> Iterator[Redis]:
    client = Redis.from_url(settings_overrides["redis_url"])
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


# What tests that commit for real may leave behind; the fleet's rows stay, because running
# workers own them.
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout that ran out
REQUEST_TABLES = (
    "inference_requests",
    "user_sessions",
    "api_keys",
    "audit_log_entries",
    "model_usage_stats",
    "user_token_usage",
    "system_config",
    "users",
)


@pytest.fixture
def committed(database: Database) -> Iterator[Database]:
    """The real database: what the test writes is committed, and truncated afterwards."""
    yield database
    truncate_request_tables(database)


def truncate_request_tables(database: Database, attempts: int = 40) -> None:
    """TRUNCATE every request table, giving way to a worker that is still writing.

    A worker may still be finishing the test's last job (a cancelled job's engine stream
    ends at its next chunk). TRUNCATE locks the tables one by one and the worker's finish
    takes them in another order: that is a deadlock, and PostgreSQL's detector could abort
    the worker's side. A lock_timeout shorter than deadlock_timeout (1 s) makes this side
    give up first, every time; the worker's write goes through and the TRUNCATE is retried.
    """
    for attempt in range(attempts):
        try:
            with database.engine.begin() as connection:
                connection.execute(text("SET LOCAL lock_timeout = '300ms'"))
                connection.execute(text(f"TRUNCATE {', '.join(REQUEST_TABLES)} CASCADE"))
            return
        except OperationalError as error:
            if getattr(error.orig, "pgcode", None) != LOCK_NOT_AVAILABLE or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def make_committed_user(database: Database, role: Role = Role.USER) -> User:
    with database.unit_of_work() as session:
        name = f"u{time.monotonic_ns()}"
        user = User(
            username=name, email=f"{name}@example.com", password_hash=TEST_PASSWORD_HASH, role=role
        )
        session.add(user)
    return user


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive ports that are all free now, for a process that
    derives ports from one (the supervisor gives its n-th worker WORKER_METRICS_PORT + n).
    The port after a free one is often a client's: both come from the ephemeral range."""
    for _ in range(100):
        first = free_port()
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} free ports in a row")


class LiveServer:
    def __init__(
        self,
        url: str,
        log_path: Path,
        process: subprocess.Popen[bytes],
        certificate: Path | None = None,
    ) -> None:
        self.url = url
        self.log_path = log_path
        self.process = process
        self.certificate = certificate  # https: the self-signed certificate clients trust

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def start_live_server(
    settings_overrides: dict[str, Any], log_dir: Path, *, tls: bool = False, **env_overrides: str
) -> LiveServer:
    """The web process as production runs it: gunicorn, gevent workers, JSON logs to stdout;
    with `tls`, serving https itself on a self-signed certificate (GUNICORN_CERTFILE)."""
    port = free_port()
    log_path = log_dir / "web.log"
    cert = key = None
    if tls:
        cert, key = self_signed_certificate(log_dir)
    env = {
        **os.environ,
        **{key.upper(): str(value) for key, value in settings_overrides.items()},
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "WEB_CONCURRENCY": "1",
        **({"GUNICORN_CERTFILE": str(cert), "GUNICORN_KEYFILE": str(key)} if tls else {}),
        **env_overrides,
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    scheme = "https" if tls else "http"
    server = LiveServer(f"{scheme}://127.0.0.1:{port}", log_path, process, cert)
    _wait_until_serving(server)
    return server


def stop_live_server(server: LiveServer) -> None:
    server.process.terminate()
    server.process.wait(timeout=30)


@pytest.fixture(scope="session")
def live_server(
    settings_overrides: dict[str, Any], database: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    server = start_live_server(settings_overrides, tmp_path_factory.mktemp("live_server"))
    yield server
    stop_live_server(server)


def _wait_until_serving(server: LiveServer, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError("web process exited:\n" + server.log_path.read_text())
        try:
            verify = str(server.certificate) if server.certificate else True
            if requests.get(f"{server.url}/health", verify=verify, timeout=3).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    raise RuntimeError("web process did not start:\n" + server.log_path.read_text())
