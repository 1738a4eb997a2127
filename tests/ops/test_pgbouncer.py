"""The app behind a real PgBouncer in transaction mode, as docker/compose.yaml runs it.

In transaction mode consecutive transactions of one client may run on different server
connections, and one server connection serves many clients. Anything session-bound (a
session advisory lock, `SET` or `set_config(..., false)`, a server-side prepared statement,
LISTEN, a temporary table, a WITH HOLD cursor) silently leaks to other clients or vanishes.
So: migrations, the CLI, the API in-process (every statement recorded), the web process
under gunicorn + gevent, a real Celery worker running a job against the Ollama double,
beat's sweeps and the maintenance jobs all go through one PgBouncer whose pool is smaller
than the number of clients. A control test shows the pool really does share session state.

Its own database (`<DATABASE_URL's name>_pgbouncer`, dropped afterwards); Redis is the
suite's test db (TEST_REDIS_DB), flushed before and after.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg2
import requests
from flask import Flask
from sqlalchemy import text

from tests.conftest import ROOT, LiveServer
from tests.ops.pgbouncer import (
    MODEL,
    PASSWORD,
    POOL_SIZE,
    PROBE_DATABASE,
    WORKER,
    PgBouncer,
    Statements,
    create_admin,
)
from tests.pipeline.conftest import Worker, wait_for
from tests.support.identity import bearer
from tests.support.ws import connect, read_until_closed

# Session-bound SQL that transaction pooling breaks; only transaction-scoped forms may run.
_INLINE = (
    r"\bpg_(?:try_)?advisory_(?:un)?lock(?:_shared)?\s*\("  # session advisory locks
    r"|set_config\s*\([^)]*,\s*false\s*\)"  # session-level settings
    r"|\bWITH\s+HOLD\b|\bCREATE\s+TEMP(?:ORARY)?\s+TABLE\b"
)
# A statement the app sent: whole statements, so the leading keyword is unambiguous.
SESSION_BOUND_STATEMENT = re.compile(
    _INLINE + r"|\A\s*(?:SET\s+(?!LOCAL\b)|RESET|PREPARE|DEALLOCATE|DISCARD|LISTEN|UNLISTEN"
    r"|NOTIFY|LOAD)\b",
    re.IGNORECASE,
)
# Source code: SQL keywords are upper case here, and a SET statement opens a string
# (`text("SET ...")`); UPDATE's SET and Python's own words must not match.
SESSION_BOUND_SOURCE = re.compile(
    _INLINE + r"|[\"']\s*SET\s+(?!LOCAL\b|NULL\b|DEFAULT\b)|\bSET\s+SESSION\b"
    r"|\b(?:PREPARE|DEALLOCATE|DISCARD|LISTEN|UNLISTEN|NOTIFY)\s+[\w\"']"
)
# Where the product code uses constructs that need transaction scope, and what it uses. The
# tests below run each one through PgBouncer; a new one here must get a test too.
TRANSACTION_SCOPED = re.compile(
    r"pg_(?:try_)?advisory_xact_lock(?:_shared)?|set_config|\bSET\s+LOCAL\b|pg_notify",
    re.IGNORECASE,
)
KNOWN_TRANSACTION_SCOPED = {
    ("db/credentials.py", "pg_advisory_xact_lock"),  # refresh-token rotation and revocation
    # A plain user's quotas: admission and capped claims lock the owner, inside the admit()
    # and fair_claim() functions (the end-to-end job test below runs both, its caller being
    # a plain user with the default quotas, each call sent in autocommit), and in the exact
    # claim (FAIR_SHARE=false) of db/inference.py.
    ("db/inference.py", "pg_advisory_xact_lock"),
    ("db/migrations/versions/0008_fair_claim_function.py", "pg_advisory_xact_lock"),
    ("db/migrations/versions/0009_admit_function.py", "pg_advisory_xact_lock"),
    ("db/session.py", "set_config"),  # the audit trigger's context
    ("db/stats.py", "pg_try_advisory_xact_lock"),  # one dashboard refresh at a time
    # The webhook trigger and a redeliver wake the deliverer: a NOTIFY is queued by its
    # transaction and sent at commit, on whichever server connection ran it, so transaction
    # pooling carries it. Its one LISTEN is the deliverer's, which connects to PostgreSQL
    # directly (docker/compose.yaml, docs/webhooks.md).
    ("db/migrations/versions/0005_webhooks.py", "pg_notify"),
    ("db/webhooks.py", "pg_notify"),
}
PRODUCT_CODE = ("config", "db", "web", "workers")


def test_the_pool_is_transaction_mode_and_really_shares_session_state(bouncer: PgBouncer) -> None:
    """The control: with one server connection behind two clients, what one client sets for
    its session is what the other one sees. This is the hazard the other tests rule out."""
    config = {row["key"]: row["value"] for row in bouncer.admin("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"

    clients = [
        psycopg2.connect(bouncer.url(PROBE_DATABASE).replace("+psycopg2", "")) for _ in range(2)
    ]
    try:
        for client in clients:
            client.autocommit = True
        with clients[0].cursor() as cursor:
            cursor.execute("SELECT set_config('ollamamax.probe', 'leaked', false)")
        with clients[1].cursor() as cursor:
            cursor.execute("SELECT current_setting('ollamamax.probe', true)")
            row = cursor.fetchone()
        assert row == ("leaked",)  # client 2 never set it: it came with the shared backend
    finally:
        for client in clients:
            client.close()


def test_product_code_uses_only_transaction_scoped_session_features() -> None:
    """Static inventory: no session-bound SQL in the product code or its migrations, and
    every transaction-scoped construct is one that a test below runs through PgBouncer."""
    found: set[tuple[str, str]] = set()
    bound: list[str] = []
    for package in PRODUCT_CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            relative = path.relative_to(ROOT).as_posix()
            found |= {(relative, match) for match in TRANSACTION_SCOPED.findall(source)}
            bound += [f"{relative}: {m.group(0)!r}" for m in SESSION_BOUND_SOURCE.finditer(source)]
    assert bound == [], "session-bound SQL breaks behind PgBouncer (transaction mode)"
    assert found == KNOWN_TRANSACTION_SCOPED, (
        "a new transaction-scoped construct: run its code path through PgBouncer in this"
        " module, then list it in KNOWN_TRANSACTION_SCOPED"
    )


def test_api_cli_and_maintenance_sql_run_through_pgbouncer_with_no_session_state(
    api_app: Flask, statements: Statements, process_env: dict[str, str], bouncer: PgBouncer
) -> None:
    admin = create_admin(process_env)  # the CLI: its own unit of work with an audit context
    api = api_app.test_client()

    registered = api.post(
        "/api/v1/auth/register",
        json={"username": "opsuser", "email": "opsuser@example.com", "password": PASSWORD},
    )
    assert registered.status_code == 201, registered.get_json()
    login = api.post("/api/v1/auth/login", json={"username": admin, "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    tokens = login.get_json()

    # Refresh rotation locks the login's family (pg_advisory_xact_lock) ...
    refreshed = api.post("/api/v1/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert refreshed.status_code == 200, refreshed.get_json()
    # ... and a replayed refresh token revokes the family under the same lock.
    replayed = api.post("/api/v1/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert replayed.status_code == 401
    login = api.post("/api/v1/auth/login", json={"username": admin, "password": PASSWORD})
    headers = bearer(login.get_json()["access_token"])

    # The dashboard refresh takes pg_try_advisory_xact_lock inside a savepoint.
    stats = api.get("/api/v1/system/stats?refresh=true", headers=headers)
    assert stats.status_code == 200, stats.get_json()
    audit = api.get("/api/v1/system/audit", headers=headers)
    assert audit.status_code == 200, audit.get_json()
    actions = {entry["action"] for entry in audit.get_json()["items"]}
    # The audit trigger read its transaction-local context: it knows who did what.
    assert {"auth.register", "auth.login", "auth.refresh_reuse"} <= actions
    with api_app.extensions["db"].engine.connect() as connection:
        who = connection.execute(
            text(
                "SELECT count(*) FILTER (WHERE user_id IS NOT NULL),"
                " count(*) FILTER (WHERE request_id IS NOT NULL) FROM audit_log_entries"
            )
        ).one()
    assert who[0] > 0  # entries that know their user
    assert who[1] > 0  # and their request

    assert api.post("/api/v1/users/logout", headers=headers).status_code == 204

    for construct in ("pg_advisory_xact_lock", "pg_try_advisory_xact_lock", "set_config"):
        assert statements.matching(re.escape(construct)), f"{construct} never ran"
    assert [s for s in statements.seen if SESSION_BOUND_STATEMENT.search(s)] == []
    assert "ERROR" not in bouncer.log()


def test_a_job_runs_end_to_end_through_pgbouncer(
    web: LiveServer, worker: Worker, beat: Path, api_app: Flask, bouncer: PgBouncer
) -> None:
    """gunicorn + gevent (psycogreen) and the worker's threads share the small pool."""
    api = api_app.test_client()
    api.post(
        "/api/v1/auth/register",
        json={"username": "opsjobs", "email": "opsjobs@example.com", "password": PASSWORD},
    )
    login = requests.post(
        f"{web.url}/api/v1/auth/login",
        json={"username": "opsjobs", "password": PASSWORD},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    headers = bearer(token)
    assert requests.get(f"{web.url}/health/ready", timeout=10).status_code == 200

    accepted = [
        requests.post(
            f"{web.url}/api/v1/inference/generate",
            json={"model": MODEL, "prompt": f"question {n}", "options": {"num_predict": 5}},
            headers=headers,
            timeout=10,
        )
        for n in range(4)
    ]
    assert [response.status_code for response in accepted] == [202] * 4, accepted[0].text
    ids = [response.json()["id"] for response in accepted]

    def finished() -> list[dict[str, Any]] | None:
        bodies = [
            requests.get(
                f"{web.url}/api/v1/inference/requests/{request_id}", headers=headers, timeout=10
            ).json()
            for request_id in ids
        ]
        done = all(body["status"] in ("completed", "failed", "cancelled") for body in bodies)
        return bodies if done else None

    results = wait_for(finished, timeout=30, interval=0.2)
    assert [body["status"] for body in results] == ["completed"] * 4, results
    assert all(body["eval_count"] == 5 and body["worker"] == WORKER for body in results)

    # The relay authorizes from the database, then answers a finished request at once.
    ws = connect(web.url, f"/ws/inference/{ids[0]}", token)
    try:
        received = read_until_closed(ws)
    finally:
        ws.close()
    assert received.of_type("done"), received.frames
    assert received.text == results[0]["output"]

    # /metrics reads the fleet's state (queue depth, slots, GPUs) from the database too.
    metrics = requests.get(f"{web.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "ollamamax_queue_depth" in metrics.text

    # Many clients (the web process, the worker, this process), few server connections.
    ours = bouncer.server.database
    clients = [row for row in bouncer.admin("SHOW CLIENTS") if row["database"] == ours]
    servers = [row for row in bouncer.admin("SHOW SERVERS") if row["database"] == ours]
    assert len(clients) >= 3
    assert 0 < len(servers) <= POOL_SIZE
    for log in (web.log_path.read_text(), worker.log(), bouncer.log()):
        assert not re.search(r"psycopg2\.|prepared statement|ERROR", log), log[-3000:]


def test_maintenance_jobs_and_sweeps_run_through_pgbouncer(
    worker: Worker, beat: Path, api_app: Flask
) -> None:
    """The worker runs beat's sweeps all along; the slower maintenance jobs are sent now."""
    for name in (
        "maintenance.refresh_dashboard",
        "maintenance.audit_partitions",
        "maintenance.cleanup",
        "maintenance.stale_nodes",
    ):
        api_app.extensions["celery"].send_task(name, queue="default")
    sweeps = {"sweep.expired_leases", "sweep.undispatched"}

    def succeeded() -> set[str]:
        return set(re.findall(r"Task (\S+)\[[^\]]+\] succeeded", worker.log()))

    maintenance = {"maintenance.refresh_dashboard", "maintenance.audit_partitions"}
    wait_for(lambda: sweeps | maintenance | {"maintenance.cleanup"} <= succeeded(), timeout=20)
    assert "cleanup (retention" in worker.log()
    assert not re.search(r"Task \S+\[[^\]]+\] raised", worker.log()), worker.log()[-3000:]
    time.sleep(0.5)
    assert "ERROR" not in beat.read_text()
