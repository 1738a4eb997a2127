"""The stack behind a throwaway PgBouncer (tests/ops/pgbouncer.py), for test_pgbouncer.py:
its own database migrated through PgBouncer, the Ollama double, a real worker, beat, the web
process under gunicorn and the API in this process, all pointed at PgBouncer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from flask import Flask
from redis import Redis
from sqlalchemy.engine import make_url

from config.settings import get_settings
from db import migrate
from tests.conftest import ROOT, LiveServer, start_live_server, stop_live_server
from tests.ops.pgbouncer import MODEL, WORKER, PgBouncer, Statements, ensure_installed
from tests.pipeline.conftest import Double, Worker, start_beat, start_double, stop_beat, wait_for
from web import create_app


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    binary = ensure_installed()
    direct = make_url(get_settings().database_url)
    direct = direct.set(database=f"{direct.database}_pgbouncer")
    migrate.create_database(direct.render_as_string(hide_password=False), drop_existing=True)
    server = PgBouncer(direct.render_as_string(hide_password=False))
    server.start(binary)
    yield server
    print(server.log())  # shown by pytest when a test failed
    server.stop()
    drop = psycopg2.connect(
        direct.set(database="postgres").render_as_string(False).replace("+psycopg2", "")
    )
    drop.autocommit = True
    with drop.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{direct.database}" WITH (FORCE)')
    drop.close()


@pytest.fixture(scope="module")
def overrides(settings_overrides: dict[str, Any], bouncer: PgBouncer) -> dict[str, Any]:
    # PgBouncer refuses startup options: the server's configuration sets this there.
    return {
        **settings_overrides,
        "database_url": bouncer.url(),
        "db_idle_in_transaction_timeout_s": 0,
    }


@pytest.fixture(scope="module")
def migrated(bouncer: PgBouncer) -> str:
    """The whole chain through PgBouncer: up, down to an empty schema, up again, check."""
    url = bouncer.url()
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    migrate.upgrade(url)
    migrate.check(url)
    return url


@pytest.fixture(scope="module")
def process_env(overrides: dict[str, Any], migrated: str) -> dict[str, str]:
    env = {key.upper(): str(value) for key, value in overrides.items()}
    env.update(
        LEASE_TTL_S="3",
        SWEEP_INTERVAL_S="0.5",
        UNDISPATCHED_GRACE_S="1",
        HEARTBEAT_INTERVAL_S="1",
        TOKEN_COALESCE_MS="0",
        LOG_LEVEL="INFO",
        # test_pgbouncer reads which tasks succeeded from Celery's line per task.
        LOG_LEVELS="celery.app.trace=INFO",
    )
    return {**os.environ, **env}


@pytest.fixture(scope="module")
def redis(overrides: dict[str, Any]) -> Iterator[Redis]:
    client = Redis.from_url(overrides["redis_url"])
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def double() -> Iterator[Double]:
    server = start_double((f"{MODEL}:latest",))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def worker(
    process_env: dict[str, str],
    redis: Redis,
    double: Double,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    log_path = tmp_path_factory.mktemp("pgbouncer_worker") / "worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "workers", "run", "--engine-url", double.url),
                *("--slots", "2", "--name", WORKER),
            ],
            cwd=ROOT,
            env=process_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    started = Worker(WORKER, process, log_path)
    try:
        wait_for(lambda: "ready." in started.log() or process.poll() is not None, timeout=30)
        if process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{started.log()}")
        yield started
    finally:
        started.stop()
        print(started.log()[-4000:])


@pytest.fixture(scope="module")
def beat(
    process_env: dict[str, str], worker: Worker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("pgbouncer_beat")
    process = start_beat(process_env, folder)
    yield folder / "beat.log"
    stop_beat(process, folder)


@pytest.fixture(scope="module")
def web(
    overrides: dict[str, Any],
    process_env: dict[str, str],
    worker: Worker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    server = start_live_server(overrides, tmp_path_factory.mktemp("pgbouncer_web"))
    yield server
    stop_live_server(server)


@pytest.fixture(scope="module")
def api_app(overrides: dict[str, Any], migrated: str, redis: Redis) -> Flask:
    """The API in this process, committing for real through PgBouncer."""
    return create_app(overrides)


@pytest.fixture(scope="module")
def statements(api_app: Flask) -> Statements:
    return Statements(api_app.extensions["db"])
