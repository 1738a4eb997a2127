"""A throwaway PgBouncer (Debian's package) in transaction mode, in front of the test server.

Each instance has its own ini in a fresh directory, listens on a free loopback port with no
Unix socket, trusts the `postgres` user (as the local server does) and logs to a file. Two
pools: the app's database with a deliberately small pool, so that every client (the web
process, the worker, beat, the test) shares a handful of server connections the way a busy
production pool does; and `probe`, one server connection for the control test that shows
session state leaking between clients.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url

from db.session import Database
from tests.conftest import ROOT, free_port

PROBE_DATABASE = "probe"
PASSWORD = "pgbouncer passphrase"
MODEL = "llama3.2"  # what the Ollama double serves
WORKER = "ops@pgbouncer"  # the worker's node name
POOL_SIZE = 4
DEBIAN_BINARY = "/usr/sbin/pgbouncer"  # not on a non-root PATH


def ensure_installed() -> str:
    """The pgbouncer binary; installs Debian's package first where it is missing."""
    found = shutil.which("pgbouncer") or (DEBIAN_BINARY if Path(DEBIAN_BINARY).exists() else None)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return DEBIAN_BINARY


class PgBouncer:
    def __init__(self, server_url: str) -> None:
        """`server_url`: the PostgreSQL database to front (host, port, database name)."""
        self.server = make_url(server_url)
        self.port = free_port()
        # Not under pytest's tmp dirs: those are private to root, and pgbouncer started as
        # root drops to the `postgres` user. Nothing secret lives here (trust auth).
        self.folder = Path(tempfile.mkdtemp(prefix="omx-pgbouncer-"))
        self.folder.chmod(0o755)
        self.log_path = self.folder / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str | None = None) -> str:
        """The URL an app uses to reach `database` (default: the fronted one) through us."""
        url: URL = self.server.set(
            host="127.0.0.1", port=self.port, database=database or self.server.database
        )
        return url.render_as_string(hide_password=False)

    def _ini(self) -> str:
        server = f"host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}"
        user = self.server.username or "postgres"
        run_as = "user = postgres\n" if os.geteuid() == 0 else ""
        return (
            "[databases]\n"
            f"{self.server.database} = {server}\n"
            f"{PROBE_DATABASE} = {server} dbname={self.server.database} pool_size=1\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.folder / 'userlist.txt'}\n"
            f"admin_users = {user}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {POOL_SIZE}\n"
            "max_client_conn = 500\n"
            # Long enough for a slow CI machine, short enough that a deadlock on the small
            # pool fails a test instead of hanging it.
            "query_wait_timeout = 30\n"
            f"{run_as}"
        )

    def start(self, binary: str) -> None:
        user = self.server.username or "postgres"
        (self.folder / "userlist.txt").write_text(f'"{user}" ""\n')
        ini = self.folder / "pgbouncer.ini"
        ini.write_text(self._ini())
        for path in (ini, self.folder / "userlist.txt"):
            path.chmod(0o644)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, str(ini)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.log()}")
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg2.OperationalError:
                time.sleep(0.1)
        raise RuntimeError(f"pgbouncer did not start:\n{self.log()}")

    def admin(self, command: str) -> list[dict[str, object]]:
        """A command on the admin console (`SHOW POOLS`, `SHOW STATS`, ...) as dicts."""
        connection = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="pgbouncer",
            user=self.server.username or "postgres",
            connect_timeout=2,
        )
        connection.autocommit = True  # the console takes no transactions
        try:
            with connection.cursor() as cursor:
                cursor.execute(command)
                columns = [column.name for column in cursor.description or ()]
                return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        finally:
            connection.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: immediate shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


class Statements:
    """Every statement an engine sends, in order."""

    def __init__(self, database: Database) -> None:
        self.seen: list[str] = []
        event.listen(database.engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        self.seen.append(statement)

    def matching(self, pattern: str) -> list[str]:
        return [s for s in self.seen if re.search(pattern, s, re.IGNORECASE)]


def create_admin(env: dict[str, str]) -> str:
    """`flask --app wsgi create-admin` through PgBouncer; returns the username."""
    username = f"ops{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "flask", "--app", "wsgi", "create-admin"),
            *("--username", username, "--email", f"{username}@example.com", "--password-stdin"),
        ],
        input=PASSWORD + "\n",
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return username
