"""What a batch of jobs cost: CPU per process from /proc, and the counters of our own
PostgreSQL cluster and Redis server.

CPU of a process tree = utime + stime of each live process in it + cutime + cstime of each
(its children that exited and were reaped): a child that ends between two readings moves
from the first term to its parent's second, so the difference of two readings is exact for
short-lived processes too (a PostgreSQL backend of one pooled connection, say), as long as
the parent reaps them, which the postmaster and gunicorn's master do at once.

The measurement's own footprint is kept out: our PostgreSQL queries run in a database of
their own (`bench_meter`) on one connection whose backend's CPU is subtracted, and the
statements and sessions counted are the application database's only; the INFO calls that
read Redis' command counts are subtracted from them.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
from redis import Redis

TICK = os.sysconf("SC_CLK_TCK")
METER_DATABASE = "bench_meter"


@dataclass(frozen=True)
class Proc:
    parent: int
    own: float  # utime + stime, seconds
    reaped: float  # cutime + cstime: children that exited and were waited for, seconds


def read_procs() -> dict[int, Proc]:
    """Every process on the machine, from /proc/<pid>/stat (threads are in their process)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry.name)] = Proc(
            parent=int(fields[1]),
            own=(int(fields[11]) + int(fields[12])) / TICK,
            reaped=(int(fields[13]) + int(fields[14])) / TICK,
        )
    return found


def descendants(procs: dict[int, Proc], root: int) -> set[int]:
    """`root`'s live descendants, whatever order /proc lists them in (root not included)."""
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.parent, []).append(pid)
    found: set[int] = set()
    frontier = [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def tree_cpu(procs: dict[int, Proc], root: int) -> float:
    """CPU seconds of `root` and all its descendants, live and reaped."""
    return sum(procs[pid].own + procs[pid].reaped for pid in {root} | descendants(procs, root))


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) core-seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


@dataclass
class Roles:
    """The processes a batch's CPU is attributed to, by pid."""

    web: int  # gunicorn's master: its workers are its children
    worker: int
    beat: int
    postgres: int  # the postmaster
    redis: int
    double: int


@dataclass
class Reading:
    cpu: dict[str, float]  # role -> CPU seconds so far
    statements: Counter[str] = field(default_factory=Counter)  # query text -> calls
    # query text -> milliseconds PostgreSQL spent planning it, and executing it, so far
    plan_ms: Counter[str] = field(default_factory=Counter)
    exec_ms: Counter[str] = field(default_factory=Counter)
    redis: Counter[str] = field(default_factory=Counter)  # command -> calls
    own_info_calls: int = 0  # our INFO calls issued before this reading's own
    # Redis' total_reads_processed: requests as they arrive, a pipeline (or a MULTI block
    # sent at once) in one read; commandstats counts each command in it.
    redis_reads: int = 0


@dataclass
class SqlTotals:
    """pg_stat_database for the application's database (these lag: see `Meter.sql`)."""

    xacts: int
    sessions: int


class Meter:
    def __init__(self, roles: Roles, pg_dsn: str, app_database: str, redis_url: str) -> None:
        self.roles = roles
        self.app_database = app_database
        self.pg = psycopg2.connect(pg_dsn)
        self.pg.autocommit = True
        with self.pg.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cursor.execute("SELECT pg_backend_pid()")
            self.meter_backend = int(cursor.fetchone()[0])
        # One connection, opened now: its handshake does not land inside a batch.
        self.redis = Redis.from_url(redis_url, single_connection_client=True)
        self.redis.ping()
        self.info_calls = 0

    def close(self) -> None:
        self.pg.close()
        self.redis.close()

    def cpu(self) -> dict[str, float]:
        procs = read_procs()
        roles = self.roles
        web_master = procs[roles.web]
        gunicorn_workers = descendants(procs, roles.web)
        meter_backend = procs.get(self.meter_backend)
        busy, steal = machine_cpu()
        load = os.times()
        return {
            "web master": web_master.own,
            # A worker gunicorn replaced meanwhile is in the master's reaped time.
            "web workers": web_master.reaped
            + sum(procs[pid].own + procs[pid].reaped for pid in gunicorn_workers),
            "worker": tree_cpu(procs, roles.worker),
            "beat": tree_cpu(procs, roles.beat),
            "postgres": tree_cpu(procs, roles.postgres)
            - (meter_backend.own if meter_backend else 0.0),
            "redis-server": tree_cpu(procs, roles.redis),
            "double": tree_cpu(procs, roles.double),
            "load generator": load.user + load.system,
            # Everything this benchmark started or is, to tell the rest of the machine apart.
            "ours": tree_cpu(procs, os.getpid()),
            "machine": busy,
            "steal": steal,
        }

    def statements(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        """(calls, planning ms, execution ms) per statement text in the application's
        database (pg_stat_statements is updated as each statement ends: no lag)."""
        with self.pg.cursor() as cursor:
            cursor.execute(
                "SELECT s.query, sum(s.calls), sum(s.total_plan_time), sum(s.total_exec_time)"
                " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = %s GROUP BY s.query",
                (self.app_database,),
            )
            rows = cursor.fetchall()
        return (
            Counter({query: int(calls) for query, calls, _, _ in rows}),
            Counter({query: float(plan) for query, _, plan, _ in rows}),
            Counter({query: float(run) for query, _, _, run in rows}),
        )

    def evicted(self) -> int:
        """Entries pg_stat_statements dropped for room (their calls would be lost)."""
        with self.pg.cursor() as cursor:
            cursor.execute("SELECT dealloc FROM pg_stat_statements_info")
            return int(cursor.fetchone()[0])

    def redis_counts(self) -> tuple[Counter[str], int, int]:
        """(calls per command, socket reads, our INFO calls before this one): Redis counts
        a command once it has run, so this INFO is in the next reading, not in its own."""
        before = self.info_calls
        self.info_calls += 1
        info: dict[str, Any] = self.redis.info("stats", "commandstats")
        calls = Counter(
            {
                name.removeprefix("cmdstat_"): int(entry["calls"])
                for name, entry in info.items()
                if name.startswith("cmdstat_")
            }
        )
        return calls, int(info["total_reads_processed"]), before

    def read(self) -> Reading:
        """CPU, statements and Redis commands now."""
        cpu = self.cpu()
        statements, plan_ms, exec_ms = self.statements()
        redis, reads, own = self.redis_counts()
        return Reading(
            cpu,
            statements,
            plan_ms,
            exec_ms,
            redis=redis,
            own_info_calls=own,
            redis_reads=reads,
        )

    def sql(self) -> SqlTotals:
        """Transactions and new sessions of the application's database so far. A backend
        reports these at most once a second, and an idle one up to 10 s after its last
        transaction (PostgreSQL 15's PGSTAT_IDLE_INTERVAL): read them after a settle."""
        with self.pg.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database"
                " WHERE datname = %s",
                (self.app_database,),
            )
            xacts, sessions = cursor.fetchone()
        return SqlTotals(xacts=int(xacts), sessions=int(sessions))


def difference(before: Reading, after: Reading) -> dict[str, Any]:
    """What happened between two readings: CPU seconds per role, statement calls per text,
    Redis calls per command (ours taken out)."""
    redis = after.redis.copy()
    redis.subtract(before.redis)
    ours = after.own_info_calls - before.own_info_calls
    redis["info"] -= ours
    statements = after.statements.copy()
    statements.subtract(before.statements)
    plan_ms, exec_ms = after.plan_ms.copy(), after.exec_ms.copy()
    plan_ms.subtract(before.plan_ms)
    exec_ms.subtract(before.exec_ms)
    return {
        "cpu": {role: after.cpu[role] - before.cpu[role] for role in after.cpu},
        "statements": +statements,  # unary + drops the zeros
        "plan_ms": +plan_ms,
        "exec_ms": +exec_ms,
        "redis": +redis,
        "redis_reads": after.redis_reads - before.redis_reads - ours,  # one read per INFO
    }


# --- who sends what to Redis ----------------------------------------------------------------

MONITOR_LINE = re.compile(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')
# Sockets of none of the stack's processes: the benchmark's own (its INFO), or closed unseen.
UNATTRIBUTED = "unattributed"
SCRIPTS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


def local_ports(owners: dict[int, str]) -> dict[int, str]:
    """TCP port on 127.0.0.1 -> the role of the process holding that socket, for every
    socket the processes in `owners` (pid -> role) have open."""
    inodes: dict[str, str] = {}
    for pid, role in owners.items():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = role
        except OSError:
            continue  # gone meanwhile
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] in inodes:
                ports[int(fields[1].rsplit(":", 1)[1], 16)] = inodes[fields[9]]
    return ports


class RedisMonitor:
    """Redis' MONITOR feed, counted by the role of the client that sent each command and
    whether it ran inside a script (a `lua` line follows the EVAL/EVALSHA that ran it).
    MONITOR slows Redis down: never during a measured batch."""

    def __init__(self, redis_url: str, owners: Callable[[], dict[int, str]]) -> None:
        url = urlsplit(redis_url)
        self.socket = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379))
        self.socket.sendall(b"MONITOR\r\n")
        self.reader = self.socket.makefile("rb")
        if self.reader.readline().strip() != b"+OK":
            raise RuntimeError("MONITOR refused")
        self.owners = owners
        self.ports: dict[int, str] = local_ports(owners())
        self.counts: Counter[tuple[str, str, str]] = Counter()  # (role, how, command)
        self.marker = f"omx-monitor-end-{os.getpid()}"
        self.drained = threading.Event()
        self.redis_url = redis_url
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def role_of(self, client: str) -> str:
        port = int(client.rsplit(":", 1)[1]) if ":" in client else -1
        if port not in self.ports:  # a connection opened since: look again
            self.ports = local_ports(self.owners())
        return self.ports.get(port, UNATTRIBUTED)

    def _read(self) -> None:
        script_owner = UNATTRIBUTED
        for raw in self.reader:
            found = MONITOR_LINE.match(raw.decode(errors="replace"))
            if found is None:
                continue
            client, command = found.group(1), found.group(2).lower()
            if command == "echo" and self.marker in raw.decode(errors="replace"):
                self.drained.set()  # everything sent before stop() has been read
                continue
            if client == "lua":
                self.counts[(script_owner, "in scripts", command)] += 1
                continue
            role = self.role_of(client)
            if command in SCRIPTS:
                script_owner = role
            self.counts[(role, "sent", command)] += 1

    def stop(self) -> Counter[tuple[str, str, str]]:
        marker = Redis.from_url(self.redis_url)
        marker.echo(self.marker)
        marker.close()
        self.drained.wait(timeout=30)
        self.socket.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)
        self.reader.close()
        self.socket.close()
        return self.counts
