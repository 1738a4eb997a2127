"""Throwaway PostgreSQL and Redis servers of a benchmark's own.

The machine's PostgreSQL and Redis are shared with other people's test runs, so their CPU and
counters say nothing about one stack. A cost benchmark starts these instead: every process of
the cluster and the redis-server is then ours, and whatever they count is our stack's doing
(plus our own measurement queries, which stay out of the application's database).

    with ThrowawayPostgres() as pg, ThrowawayRedis() as redis:
        pg.url("ollamamax"), redis.url
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg2
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
# PostgreSQL refuses to run as root; as root we hand the cluster to this user.
PG_USER = "postgres"


class Server:
    """A child process with a scratch folder: stopped and removed on exit, errors included."""

    process: subprocess.Popen[bytes] | None = None
    folder: Path

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _halt(self, how: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(how)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        self._halt(signal.SIGTERM)
        shutil.rmtree(self.folder, ignore_errors=True)


class ThrowawayPostgres(Server):
    """initdb into a temporary folder, then `postgres` on a free port (TCP on 127.0.0.1, its
    unix socket in that folder), trust auth, pg_stat_statements preloaded, fsync and
    synchronous_commit at their defaults (on), as a production server has them."""

    def __init__(self, bin_dir: Path = PG_BIN) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="omx-cost-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(PG_USER)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self.as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def start(self) -> None:
        subprocess.run(
            [
                *(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres"),
                *("--auth=trust", "--encoding=UTF8", "--no-instructions"),
            ],
            cwd=self.folder,
            check=True,
            capture_output=True,
            **self.as_user,
        )
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.folder),
            "shared_preload_libraries": "pg_stat_statements",
            # Room for every distinct statement of a run: an evicted entry loses its calls.
            "pg_stat_statements.max": "10000",
            "pg_stat_statements.track": "top",
            "pg_stat_statements.track_utility": "on",  # BEGIN, COMMIT, SET count as statements
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
        self.process = subprocess.Popen(
            argv,
            cwd=self.folder,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self.as_user,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start; see {self.log}") from None
                time.sleep(0.2)

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL the application takes (TCP, as it reaches a real server)."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self._halt(signal.SIGINT)  # "fast" shutdown: sessions are ended, nothing is waited for
        shutil.rmtree(self.folder, ignore_errors=True)


class ThrowawayRedis(Server):
    """redis-server on a free port with nothing persisted (--save "" --appendonly no)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="omx-cost-redis-"))

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        argv += ["--logfile", str(self.folder / "redis.log"), "--daemonize", "no"]
        self.process = subprocess.Popen(
            argv, cwd=self.folder, stdout=subprocess.DEVNULL, start_new_session=True
        )
        client = Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                client.close()
                return
            except RedisConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.folder}/redis.log")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"
