"""Throwaway PostgreSQL and Redis servers for fault tests: each test that stops a dependency
gets one of its own, since the machine's servers are shared and must never be stopped.

They are made to be stopped and started again: a server keeps its port and its data folder
across restarts, so the processes under test reconnect to the same address and find what
they wrote. The benchmarks run on them too, configured as a measurement needs them
(bench/services.py).

    with ThrowawayPostgres() as pg:
        url = pg.migrated("ollamamax")  # created and migrated as tests/conftest.py does
        ...
        pg.stop()   # fast shutdown: sessions are ended, nothing is waited for
        pg.start()  # the same port, the same data

    with ThrowawayRedis() as redis:  # appendonly yes: a restart keeps what was written
        redis.stop()  # SHUTDOWN (it writes the append-only file first)
        redis.start()

As root, PostgreSQL is run as the `postgres` account (initdb refuses root), its folder handed
to that account. Everything is removed on exit, errors included.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg2
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_ACCOUNT = "postgres"  # who runs the cluster when we are root
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Throwaway:
    """A server process with a port and a folder that outlive its restarts: `start` and
    `stop` as often as a test likes, `close` (or leaving the `with` block) to end it and
    remove the folder."""

    name = "server"

    def __init__(self, prefix: str, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host  # where it listens and is reached (a cluster host's address)
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.log = self.folder / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (again) on the same port and folder; returns once it answers."""
        if self.running:
            return
        self.process = self._spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (as its operator would); returns once the process has exited."""
        if not self.running:
            return
        assert self.process is not None
        self._ask_to_stop()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.folder, ignore_errors=True)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # Appended to across restarts; its own session, so a Ctrl-C reaches only the test.
        with self.log.open("ab") as log:
            return subprocess.Popen(
                argv,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _ask_to_stop(self) -> None:
        raise NotImplementedError


class ThrowawayPostgres(Throwaway):
    """A cluster of its own (initdb on first start, trust auth), served by `postgres` on
    127.0.0.1:<port>, its unix socket in its folder."""

    name = "postgres"

    def __init__(
        self,
        port: int | None = None,
        bin_dir: Path = PG_BIN,
        settings: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """`settings`: server settings (`-c name=value`) on top of a scratch cluster's."""
        super().__init__("omx-throwaway-pg-", port, host)
        self.bin_dir = bin_dir
        self.settings = {
            "listen_addresses": host,
            "unix_socket_directories": str(self.folder),
            "fsync": "off",  # a scratch cluster: durability across a crash is not tested here
            **(settings or {}),
        }
        self.data = self.folder / "data"
        self.as_account: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(PG_ACCOUNT)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self.as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL the application takes (TCP, as it reaches a real server)."""
        return f"postgresql+psycopg2://postgres@{self.host}:{self.port}/{database}"

    def migrated(self, database: str) -> str:
        """Create `database` and migrate it to head, as tests/conftest.py does; its URL."""
        from db import migrate

        url = self.url(database)
        migrate.create_database(url)
        migrate.upgrade(url)
        return url

    def _spawn(self) -> subprocess.Popen[bytes]:
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                [
                    *(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres"),
                    *("--auth=trust", "--encoding=UTF8", "--no-instructions", "--no-sync"),
                ],
                cwd=self.folder,
                check=True,
                capture_output=True,
                **self.as_account,
            )
            if not self.host.startswith("127."):  # a cluster host: its neighbours connect
                with (self.data / "pg_hba.conf").open("a") as hba:
                    hba.write(f"host all all {self.host}/24 trust\n")
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        return self._popen(argv, **self.as_account)

    def _answers(self) -> bool:
        try:
            psycopg2.connect(self.dsn(), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def _ask_to_stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)  # "fast" shutdown: sessions are ended


class ThrowawayRedis(Throwaway):
    """redis-server on 127.0.0.1:<port> with appendonly yes in its folder, so what was
    written before a stop is there after the next start (`persist=False`: nothing written to
    disk, for a benchmark that never restarts it)."""

    name = "redis"

    def __init__(
        self, port: int | None = None, *, persist: bool = True, host: str = "127.0.0.1"
    ) -> None:
        super().__init__("omx-throwaway-redis-", port, host)
        self.persist = persist

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: Any) -> Redis:
        """A client that does not retry: a test of faults wants to see them."""
        return Redis(
            host=self.host,
            port=self.port,
            socket_connect_timeout=1,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
            **kwargs,
        )

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = ["redis-server", "--port", str(self.port), "--bind", self.host]
        argv += ["--dir", str(self.folder), "--save", ""]
        argv += ["--appendonly", "yes" if self.persist else "no"]
        if not self.host.startswith("127."):  # a cluster host's address: no password there
            argv += ["--protected-mode", "no"]
        argv += ["--daemonize", "no", "--logfile", ""]  # the log to stdout, so to self.log
        return self._popen(argv)

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except RedisConnectionError:
            return False

    def _ask_to_stop(self) -> None:
        try:
            with self.client() as client:
                client.shutdown()  # writes the append-only file, then exits
        except RedisError:  # it refused: SIGTERM shuts it down the same way
            assert self.process is not None
            self.process.terminate()
