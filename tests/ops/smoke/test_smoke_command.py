"""`python -m ops.smoke`, run as operators run it, against a live local stack: gunicorn with
the production rate limits, a real worker in front of the Ollama double, an admin made with
`flask --app wsgi create-admin`. The command must pass and leave nothing behind."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from db.session import Database
from ops.smoke.context import generates
from ops.smoke.scenarios import SCENARIOS
from ops.smoke.scenarios.system import revert_body
from tests.conftest import ROOT, LiveServer, free_port, start_live_server, stop_live_server
from tests.pipeline.conftest import Double, Worker, node_online, wait_for

ADMIN_PASSWORD = "smoke test passphrase 7"
METRICS = "metrics.prometheus"
SERVER_PACKAGES = {"web", "workers", "db", "config"}


@pytest.fixture(scope="module")
def stack(
    settings_overrides: dict[str, Any],
    database: Database,
    double: Double,
    start_worker: Callable[..., Worker],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    double.reset()
    # 10 ms a token: the cancel scenario's 4096-token job would take 40 s, so its cancel
    # always lands mid-generation; the other jobs ask for 16 tokens at most.
    double.configure(token_delay_s=0.01)
    worker = start_worker(double.url, name="smoke@test", slots=2)
    wait_for(lambda: node_online(database, worker.name), timeout=20)
    server = start_live_server(
        settings_overrides,
        tmp_path_factory.mktemp("smoke_server"),
        # Production's per-user budget, so the command proves it copes with 429s.
        RATELIMIT_DEFAULT="100/minute;10/second",
        SYSTEM_METRICS_INTERVAL_S="0.5",
    )
    yield server
    stop_live_server(server)
    double.reset()


@pytest.fixture(scope="module")
def tls_stack(
    settings_overrides: dict[str, Any], stack: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A second web process on the same fleet, serving https with a self-signed certificate."""
    server = start_live_server(
        settings_overrides,
        tmp_path_factory.mktemp("smoke_tls"),
        tls=True,
        SYSTEM_METRICS_INTERVAL_S="0.5",
    )
    assert server.certificate is not None
    try:
        yield server.url, server.certificate
    finally:
        stop_live_server(server)


@pytest.fixture
def admin(settings_overrides: dict[str, Any], committed: Database) -> dict[str, str]:
    """An admin made the way operators make the first one: the CLI, password on stdin."""
    name = f"smoke{time.monotonic_ns()}"
    env = {**os.environ, **{key.upper(): str(v) for key, v in settings_overrides.items()}}
    command = ["create-admin", "--username", name, "--email", f"{name}@example.com"]
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *command, "--password-stdin"],
        input=ADMIN_PASSWORD + "\n",
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with committed.engine.connect() as connection:
        user_id = connection.scalar(text("SELECT id FROM users WHERE username = :n"), {"n": name})
    return {"id": str(user_id), "email": f"{name}@example.com"}


def run_smoke(*args: str, timeout: float = 150) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_PASSWORD", "METRICS_TOKEN")}
    done = subprocess.run(
        [sys.executable, "-m", "ops.smoke", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        report = json.loads(done.stdout) if "--json" in args else {}
    except ValueError:
        pytest.fail(f"not JSON:\n{done.stdout}\n{done.stderr}")
    return done.returncode, report, done.stdout + done.stderr


def _rows(database: Database, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql), params)]


def test_every_scenario_passes_against_a_live_stack_and_nothing_is_left_behind(
    stack: LiveServer, admin: dict[str, str], committed: Database
) -> None:
    config_before = _rows(committed, "SELECT key, value FROM system_config ORDER BY key")
    users_before = _rows(committed, "SELECT count(*) FROM users")

    code, report, _ = run_smoke(
        "--base-url", stack.url, "--admin-email", admin["email"],
        "--admin-password", ADMIN_PASSWORD, "--timeout", "30", "--json",
    )  # fmt: skip

    results = {result["name"]: result for result in report["results"]}
    assert list(results) == [scenario.name for scenario in SCENARIOS]
    assert len(results) >= 16
    not_passed = {name: r for name, r in results.items() if r["status"] != "PASS"}
    assert not_passed == {}
    assert report["model"] == "llama3.2:latest"  # the fleet's first available model
    assert report["cleanup"]["problems"] == []
    assert code == 0
    assert report["summary"]["failed"] == 0

    # Nothing left behind: every key revoked, every login ended, no job still going, no
    # config change, no extra account.
    keys = _rows(committed, "SELECT revoked_at FROM api_keys WHERE user_id = :u", u=admin["id"])
    assert len(keys) == 2  # keys.create's and the clients' key
    assert all(revoked_at is not None for (revoked_at,) in keys)
    live_logins = _rows(
        committed,
        "SELECT family_id FROM user_sessions WHERE user_id = :u AND revoked_at IS NULL",
        u=admin["id"],
    )
    assert live_logins == []
    unfinished = _rows(
        committed,
        "SELECT id, status FROM inference_requests WHERE user_id = :u "
        "AND status NOT IN ('completed', 'failed', 'cancelled')",
        u=admin["id"],
    )
    assert unfinished == []
    assert _rows(committed, "SELECT key, value FROM system_config ORDER BY key") == config_before
    assert _rows(committed, "SELECT count(*) FROM users") == users_before


def test_an_https_deployment_passes_with_its_ca_bundle(
    tls_stack: tuple[str, Path], admin: dict[str, str]
) -> None:
    """--ca-bundle reaches all four clients: requests, websocket-client, ollama, openai."""
    url, cert = tls_stack
    _, report, _ = run_smoke(
        "--base-url", url, "--admin-email", admin["email"], "--admin-password", ADMIN_PASSWORD,
        "--ca-bundle", str(cert), "--timeout", "30", "--json",
    )  # fmt: skip
    not_passed = {r["name"]: r["reason"] for r in report["results"] if r["status"] != "PASS"}
    assert not_passed == {}
    assert report["cleanup"]["problems"] == []


def test_a_dead_deployment_fails_where_it_is_touched_and_skips_the_rest() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    code, report, _ = run_smoke(
        "--base-url", url, "--admin-email", "a@example.com", "--admin-password", "x" * 12,
        "--timeout", "5", "--json",
    )  # fmt: skip
    statuses = {r["name"]: (r["status"], r["reason"]) for r in report["results"]}
    assert code == 1
    assert statuses["health.live"][0] == "FAIL"
    assert statuses["auth.login"][0] == "FAIL"
    assert statuses["keys.use"] == ("SKIP", "needs keys.create")
    assert statuses["models.list"] == ("SKIP", "needs auth.login")
    assert statuses["inference.stream"] == ("SKIP", "needs auth.login")
    assert statuses[METRICS][0] == "FAIL"
    assert report["cleanup"] == {"done": [], "problems": []}


def test_usage_errors_exit_2_and_list_shows_every_scenario() -> None:
    code, _, output = run_smoke("--base-url", "http://127.0.0.1:1")
    assert code == 2
    assert "--admin-email" in output
    code, _, output = run_smoke("--list")
    assert code == 0
    assert [line.split()[0] for line in output.splitlines()] == [s.name for s in SCENARIOS]


def test_a_config_change_is_reverted_to_what_get_showed() -> None:
    overridden = {"value": 30, "default": 90, "overridden": True}
    assert revert_body(overridden) == {"retention_days": 30}
    # null, not the value: storing the default would pin it against later environment changes
    assert revert_body({"value": 90, "default": 90, "overridden": False}) == {
        "retention_days": None
    }


def test_it_asks_a_model_that_generates_never_an_embedding_only_one() -> None:
    def listed(capabilities: object) -> dict[str, Any]:
        return {"name": "m", "parameters": {"show": {"capabilities": capabilities}}}

    assert not generates(listed(["embedding"]))
    assert generates(listed(["completion", "tools"]))
    assert generates({"name": "m", "parameters": {}})  # unknown: worth a try


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_command_speaks_only_http_and_websocket() -> None:
    """It runs against remote deployments: none of the server's packages, no test helpers."""
    wrong = {
        str(path.relative_to(ROOT)): sorted(
            name for name in _imports(path) if name.split(".")[0] in SERVER_PACKAGES | {"tests"}
        )
        for path in sorted((ROOT / "ops" / "smoke").rglob("*.py"))
    }
    assert {path: names for path, names in wrong.items() if names} == {}
