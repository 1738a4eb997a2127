"""Cost per job: the CPU, SQL and Redis work one streamed 20-token job costs, per process,
on each path in, at one caller and at many.

    .venv/bin/python -m bench.cost [--label before|after] [--quick]
        [--paths rest,ollama,openai] [--callers 1,20] [--jobs 600] [--jobs-single 300]

Own servers: a throwaway PostgreSQL 15 cluster (initdb into a temporary folder,
pg_stat_statements preloaded) and a throwaway redis-server, both removed at the end; the
machine's shared ones are busy with other people's tests. Every process of the cluster is
then ours, so PostgreSQL's CPU is the whole cluster's, short-lived backends included.

The stack: gunicorn with config/gunicorn.py (WEB_CONCURRENCY=1: one gevent worker), one
worker (`python -m workers run --slots 20`), Celery beat, the Ollama double answering 20
tokens 2 ms apart with no extra delay before the first. LOG_LEVEL=INFO everywhere (the
production default), the rate limiter on (limits too high to refuse anything).

Paths, each streamed to its end: `rest` (POST /api/v1/inference/generate with a JWT, then
/ws/inference/<id> over a WebSocket until the final status, resumed with ?after= when
closed for being too slow or by a shutdown), `rest-key` (the same with an API key),
`ollama` (the official `ollama` client's generate(stream=True) through the Ollama door,
with an API key) and `openai` (the official `openai` client's
chat.completions.create(stream=True) through the OpenAI door). Per path: a warm-up, then a
batch at each caller count; before each batch, the double called directly with the same
client (the `ollama` client for `rest`) at the same concurrency, for the time to first token
OllamaMax adds.

Results: bench/results/cost-<label>.json and bench/results/cost.md (before -> after side by
side once both exist); --quick writes to bench/results/quick/. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import ollama
import openai
import psycopg2
import requests
from openai.types.chat import ChatCompletionChunk

from bench.cost_report import write
from bench.machine import Neighbours, describe, load_average
from bench.meter import (
    METER_DATABASE,
    Meter,
    Reading,
    RedisMonitor,
    Roles,
    SqlTotals,
    descendants,
    difference,
    read_procs,
)
from bench.services import measured_postgres, unpersisted_redis
from bench.speed_probe import REFERENCE_MS, SpeedProbe
from bench.stack import RESULTS, ROOT, Stack, percentile, progress
from tests.support.throwaway import ThrowawayPostgres, ThrowawayRedis
from tests.support.ws import Received, connect, next_frame

MODEL = "llama3.2"
TOKENS = 20
TOKEN_DELAY_S = 0.002
APP_DATABASE = "ollamamax"
# Two windows, as the default limit has: the limiter does the same work per request as in
# production, and never refuses.
RATE_LIMIT = "1000000/minute;100000/second"
# PostgreSQL 15 reports a backend's transaction and session counts at most once a second,
# and an idle backend's up to 10 s after its last transaction: wait this long before reading.
SETTLE_S = 11.0
# After a batch's last stream ends, the worker still acks its task; counted in the batch.
DRAIN_S = 0.5
TERMINAL = ("completed", "failed", "cancelled")
CPU_ROLES = ("web master", "web workers", "worker", "beat", "postgres", "redis-server")
APART = ("double", "load generator")


# --- one job per path ---------------------------------------------------------------------


@dataclass
class Outcome:
    ttft_ms: float = 0.0  # from the call to the first token received
    total_ms: float = 0.0
    words: int = 0
    error: str | None = None
    resumes: int = 0  # WebSockets opened again to resume (REST paths)

    @classmethod
    def of(cls, started: float, first: float | None, text: str) -> Outcome:
        ended = time.perf_counter()
        return cls(((first or ended) - started) * 1000, (ended - started) * 1000, len(text.split()))


Job = Callable[[int], Outcome]  # one job, numbered (the number makes its prompt)


def ollama_job(client: ollama.Client) -> Job:
    def job(n: int) -> Outcome:
        started, first, text = time.perf_counter(), None, []
        for part in client.generate(
            model=MODEL, prompt=f"cost {n}", options={"num_predict": TOKENS}, stream=True
        ):
            if part.response:
                first = first or time.perf_counter()
                text.append(part.response)
        return Outcome.of(started, first, "".join(text))

    return job


def openai_job(client: openai.OpenAI) -> Job:
    def job(n: int) -> Outcome:
        started, first, text = time.perf_counter(), None, []
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"cost {n}"}],
            max_tokens=TOKENS,
            stream=True,
        )
        for chunk in cast(openai.Stream[ChatCompletionChunk], stream):
            content = chunk.choices[0].delta.content if chunk.choices else None
            if content:
                first = first or time.perf_counter()
                text.append(content)
        return Outcome.of(started, first, "".join(text))

    return job


# Closes after which a client reconnects at once and resumes with ?after=<last seq>, by code
# and reason (web/realtime/socket.py): too slow to keep up, and the server going away. Other
# 1013s are refusals (a quota, a dependency down) that a client should not retry at once.
RESUMABLE = {(1013, "slow_consumer"), (1001, "server_shutdown")}
MAX_RESUMES = 3


@dataclass
class Followed:
    """What a REST job's WebSocket(s) brought: the terminal status, when the first token came,
    the text, and how many times the socket was opened again."""

    status: str | None = None
    first: float | None = None
    text: list[str] = field(default_factory=list)
    last_seq: int = 0
    resumes: int = 0


def follow_socket(base: str, job_id: str, credential: str) -> Followed:
    """Follow a job as a native client does: a socket closed for being too slow, or by a
    server shutting down, is opened again with ?after=<last seq>, and a `final` frame (the
    stored request, when its end was not announced) ends it as its status would. The first
    token is the first `token` frame."""
    got = Followed()
    for resumes in range(MAX_RESUMES + 1):
        got.resumes = resumes
        after = f"?after={got.last_seq}" if got.last_seq else ""
        ws = connect(base, f"/ws/inference/{job_id}{after}", header_token=credential)
        closed = Received()
        try:
            while got.status is None and (frame := next_frame(ws, closed)) is not None:
                got.last_seq = frame.get("seq", got.last_seq)
                if frame.get("type") == "token":
                    got.first = got.first or time.perf_counter()
                    got.text.append(frame["text"])
                elif frame.get("type") == "status" and frame.get("status") in TERMINAL:
                    got.status = frame["status"]
                elif frame.get("type") == "final":
                    stored = frame["request"]
                    got.status, got.text = stored["status"], [stored.get("output") or ""]
        finally:
            ws.close()
        if got.status is not None or (closed.close_code, closed.close_reason) not in RESUMABLE:
            break
    if got.status is None:
        raise RuntimeError(
            f"the socket closed before the final status ({closed.close_code}"
            f" {closed.close_reason!r}, after {got.resumes} resume(s))"
        )
    return got


def rest_job(base: str, credential: str) -> Job:
    """Submit, then follow the job on its WebSocket to the final status (`follow_socket`);
    the batch counts the sockets opened again."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {credential}"

    def job(n: int) -> Outcome:
        started = time.perf_counter()
        answer = session.post(
            f"{base}/api/v1/inference/generate",
            json={"model": MODEL, "prompt": f"cost {n}", "options": {"num_predict": TOKENS}},
            timeout=60,
        )
        if answer.status_code != 202:
            raise RuntimeError(f"submit answered {answer.status_code}: {answer.text[:200]}")
        got = follow_socket(base, answer.json()["id"], credential)
        if got.status != "completed":
            raise RuntimeError(f"job ended {got.status}")
        return replace(Outcome.of(started, got.first, "".join(got.text)), resumes=got.resumes)

    return job


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@dataclass(frozen=True)
class Route:
    title: str
    through: Callable[[str, dict[str, str]], Job]  # (OllamaMax base, credentials) -> a job
    direct: Callable[[str], Job]  # (the double's base) -> the same client called directly


def direct_ollama(double: str) -> Job:
    return ollama_job(ollama.Client(host=double))


ROUTES = {
    "rest": Route(
        "REST submit + WebSocket (JWT)",
        lambda base, auth: rest_job(base, auth["jwt"]),
        direct_ollama,
    ),
    "rest-key": Route(
        "REST submit + WebSocket (API key)",
        lambda base, auth: rest_job(base, auth["key"]),
        direct_ollama,
    ),
    "ollama": Route(
        "Ollama door, `ollama` client",
        lambda base, auth: ollama_job(ollama.Client(host=base, headers=bearer(auth["key"]))),
        direct_ollama,
    ),
    "openai": Route(
        "OpenAI door, `openai` client",
        lambda base, auth: openai_job(
            openai.OpenAI(base_url=f"{base}/v1", api_key=auth["key"], max_retries=0)
        ),
        lambda double: openai_job(
            openai.OpenAI(base_url=f"{double}/v1", api_key="ollama", max_retries=0)
        ),
    ),
}
DEFAULT_PATHS = ("rest", "ollama", "openai")


# --- running jobs -------------------------------------------------------------------------


def run_jobs(make_job: Callable[[], Job], callers: int, jobs: int) -> tuple[list[Outcome], float]:
    """`jobs` jobs over `callers` threads in a closed loop, each caller with its own client
    (made before the clock starts). Returns the outcomes and the wall seconds."""
    clients = [make_job() for _ in range(callers)]
    numbers = iter(range(jobs))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def caller(job: Job) -> None:
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            try:
                outcome = job(n)
            except Exception as error:  # counted and shown; the batch goes on
                outcome = Outcome(error=repr(error)[:300])
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=caller, args=(job,), daemon=True) for job in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, time.perf_counter() - started


def ttft_summary(outcomes: list[Outcome]) -> dict[str, float]:
    times = [o.ttft_ms for o in outcomes if o.error is None]
    return {"p50": percentile(times, 50), "p99": percentile(times, 99), "n": len(times)}


# --- the measurement ----------------------------------------------------------------------


class Others(Neighbours):
    """Neighbours that counts the shared PostgreSQL and Redis as others' work too: ours are
    our own children here."""

    def _foreign(self, snapshot: dict[int, tuple[int, str, float, int]]) -> set[int]:
        mine = {os.getpid()}
        changed = True
        while changed:
            before = len(mine)
            mine |= {pid for pid, (parent, *_) in snapshot.items() if parent in mine}
            changed = len(mine) != before
        return set(snapshot) - mine


@dataclass
class Plan:
    paths: list[str]
    callers: list[int]
    jobs: int  # at the largest caller count (and any above 1)
    jobs_single: int  # at one caller
    warmup: int
    direct: int  # direct calls to the double before each batch
    attribution: int  # jobs per path under Redis MONITOR, after the batches (0: none)
    settle_s: float
    idle_s: float
    web_processes: int
    slots: int
    rounds: int  # every batch this many times, paths interleaved; the report takes medians

    def jobs_at(self, callers: int) -> int:
        return self.jobs_single if callers == 1 else self.jobs


@dataclass
class Session:
    """What the batches share: the stack, its meter, credentials, the neighbours' sampler."""

    stack: Stack
    meter: Meter
    auth: dict[str, str]
    others: Others
    idle: dict[str, Any]
    probe: SpeedProbe


def idle_background(meter: Meter, seconds: float) -> dict[str, Any]:
    """What the stack does per second with no jobs (beat's sweeps, heartbeats, pool pings):
    the part of the settle window after a batch that is not the batch's, subtracted from its
    transactions and sessions."""
    before, sql_before, started = meter.read(), meter.sql(), time.monotonic()
    time.sleep(seconds)
    after, sql_after = meter.read(), meter.sql()
    elapsed = time.monotonic() - started
    changed = difference(before, after)
    return {
        "seconds": round(elapsed, 1),
        "cpu_ms_per_s": {
            role: changed["cpu"][role] * 1000 / elapsed for role in (*CPU_ROLES, *APART)
        },
        "transactions_per_s": (sql_after.xacts - sql_before.xacts) / elapsed,
        "sessions_per_s": (sql_after.sessions - sql_before.sessions) / elapsed,
        "statements_per_s": sum(changed["statements"].values()) / elapsed,
        "redis_commands_per_s": sum(changed["redis"].values()) / elapsed,
        "redis_requests_per_s": changed["redis_reads"] / elapsed,
    }


def batch(s: Session, path: str, callers: int, jobs: int, plan: Plan) -> dict[str, Any]:
    """One measured batch; the stack has settled before it (see SETTLE_S)."""
    route = ROUTES[path]
    double = f"http://127.0.0.1:{s.stack.double_port}"
    progress(f"cost: {path}, {callers} caller(s): the double directly, {plan.direct} calls")
    direct, _ = run_jobs(lambda: route.direct(double), callers, plan.direct)

    progress(f"cost: {path}, {callers} caller(s): {jobs} jobs through OllamaMax")
    load_before = load_average()
    s.others.take()
    sql_before = s.meter.sql()
    before = s.meter.read()
    since = time.time()
    outcomes, wall = run_jobs(lambda: route.through(s.stack.base, s.auth), callers, jobs)
    time.sleep(DRAIN_S)
    after = s.meter.read()
    probe_ms = s.probe.mean_ms(since, time.time())
    ended = time.monotonic()
    load_after = load_average()
    neighbours = s.others.take()
    time.sleep(plan.settle_s)
    sql_after = s.meter.sql()
    settled = time.monotonic() - ended
    summary = summarize(
        path, callers, outcomes, direct, wall, before, after, (sql_before, sql_after, settled), s
    )
    total = summary["ollamamax_ms_per_job"]
    return summary | {
        "machine_during": {
            "load_1m": f"{load_before} -> {load_after}",
            "busiest_others": neighbours["busiest"],
            "speed_probe_ms": probe_ms,
        },
        # The same CPU as if the host had run at the probe's reference speed throughout:
        # for comparing runs (bench/speed_probe.py). The goals are judged on the raw figure.
        "ollamamax_ms_per_job_at_reference": total * REFERENCE_MS / probe_ms if probe_ms else None,
    }


def summarize(
    path: str,
    callers: int,
    outcomes: list[Outcome],
    direct: list[Outcome],
    wall: float,
    before: Reading,
    after: Reading,
    sql: tuple[SqlTotals, SqlTotals, float],
    s: Session,
) -> dict[str, Any]:
    ok = [o for o in outcomes if o.error is None]
    n = max(len(ok), 1)
    changed = difference(before, after)
    cpu = changed["cpu"]
    sql_before, sql_after, settled = sql
    idle = s.idle
    # The settle after the batch is idle time: its background is not the batch's.
    xacts = sql_after.xacts - sql_before.xacts - idle["transactions_per_s"] * settled
    sessions = sql_after.sessions - sql_before.sessions - idle["sessions_per_s"] * settled
    statements = sum(changed["statements"].values())
    top = changed["statements"].most_common(15)
    redis = sum(changed["redis"].values())
    alone, through = ttft_summary(direct), ttft_summary(ok)
    window = wall + DRAIN_S
    others = cpu["machine"] - cpu["ours"]
    return {
        "path": path,
        "title": ROUTES[path].title,
        "callers": callers,
        "jobs": len(ok),
        "errors": len(outcomes) - len(ok),
        "socket_resumes": sum(o.resumes for o in ok),
        "first_errors": sorted({o.error for o in outcomes if o.error})[:3],
        "words_per_job": statistics.fmean(o.words for o in ok) if ok else 0.0,
        "wall_s": wall,
        "jobs_per_s": len(ok) / wall,
        "cpu_ms_per_job": {role: cpu[role] * 1000 / n for role in CPU_ROLES},
        "ollamamax_ms_per_job": sum(cpu[role] for role in CPU_ROLES) * 1000 / n,
        "apart_ms_per_job": {role: cpu[role] * 1000 / n for role in APART},
        "ttft_ms": {
            "through": through,
            "direct": alone,
            "added": {q: through[q] - alone[q] for q in ("p50", "p99")},
        },
        "per_job": {
            "transactions": xacts / n,
            "statements": statements / n,
            # PostgreSQL's own time for them (pg_stat_statements, track_planning on).
            "statement_plan_ms": sum(changed["plan_ms"].values()) / n,
            "statement_exec_ms": sum(changed["exec_ms"].values()) / n,
            "new_connections": sessions / n,
            "redis_commands": redis / n,
            "redis_requests": changed["redis_reads"] / n,
        },
        "statements_by_text": {text: calls / n for text, calls in top},
        "statement_ms_by_text": {
            text: {"plan": changed["plan_ms"][text] / n, "exec": changed["exec_ms"][text] / n}
            for text, _ in top
        },
        # pg_stat_statements keeps an IN list of each length as a statement of its own.
        "statements_elsewhere": {
            "texts": len(changed["statements"]) - len(top),
            "per_job": (statements - sum(calls for _, calls in top)) / n,
        },
        "redis_by_command": {cmd: calls / n for cmd, calls in changed["redis"].most_common()},
        "raw": {
            "transactions": sql_after.xacts - sql_before.xacts,
            "sessions": sql_after.sessions - sql_before.sessions,
            "sql_settle_s": round(settled, 1),
            "statements": statements,
            "redis_commands": redis,
            "redis_reads": changed["redis_reads"],
            "cpu_s": {role: round(seconds, 3) for role, seconds in cpu.items()},
        },
        "machine": {
            "others_core_s": round(others, 1),
            "others_share": others / (window * (os.cpu_count() or 1)),
            "steal_core_s": round(cpu["steal"], 1),
        },
    }


def owners(stack: Stack) -> dict[int, str]:
    """pid -> role, for telling Redis clients apart by the process holding the socket."""
    procs = read_procs()
    found = {pid: "web" for pid in descendants(procs, stack.pid_of("web"))}
    for role in ("worker", "beat"):
        root = stack.pid_of(role)
        found |= {pid: role for pid in {root} | descendants(procs, root)}
    return found


def redis_sources(s: Session, path: str, callers: int, jobs: int) -> dict[str, Any]:
    """Who sends which Redis commands, and which run inside scripts: `jobs` more jobs
    under MONITOR (not timed: MONITOR slows Redis). INFO commandstats counts a script's
    commands as well as the EVALSHA that ran them; this tells the two apart."""
    progress(f"cost: {path}: {jobs} jobs at {callers} under Redis MONITOR (not timed)")
    monitor = RedisMonitor(s.stack.redis_url, lambda: owners(s.stack))
    before = s.meter.read()
    outcomes, wall = run_jobs(partial(ROUTES[path].through, s.stack.base, s.auth), callers, jobs)
    time.sleep(DRAIN_S)
    counts = monitor.stop()
    after = s.meter.read()
    n = max(sum(o.error is None for o in outcomes), 1)
    by_role: dict[str, dict[str, dict[str, float]]] = {}
    for (role, how, command), calls in sorted(counts.items(), key=lambda item: -item[1]):
        by_role.setdefault(role, {"sent": {}, "in scripts": {}})[how][command] = calls / n
    return {
        "jobs": n,
        "callers": callers,
        "seconds": round(wall, 1),
        "commandstats_per_job": sum(difference(before, after)["redis"].values()) / n,
        "monitor_per_job": sum(counts.values()) / n,
        "idle_per_job": s.idle["redis_commands_per_s"] * wall / n,
        "by_role": by_role,
    }


def build_stack(pg: ThrowawayPostgres, redis: ThrowawayRedis, plan: Plan) -> Stack:
    return Stack(
        slots=plan.slots,
        web_processes=plan.web_processes,
        database_url=pg.url(APP_DATABASE),
        redis_url=redis.url,
        LOG_LEVEL="INFO",
        RATELIMIT_ENABLED="true",
        RATELIMIT_DEFAULT=RATE_LIMIT,
        # The production default: a model no node serves is refused, not queued.
        QUEUE_WHILE_UNAVAILABLE="false",
    )


def measure(plan: Plan) -> dict[str, Any]:
    started = time.time()
    others = Others(interval_s=2.0)
    probe = SpeedProbe()
    try:
        return _measure(plan, started, others, probe)
    finally:
        probe.stop()
        others.stop()


def _measure(plan: Plan, started: float, others: Others, probe: SpeedProbe) -> dict[str, Any]:
    batches: list[dict[str, Any]] = []
    sources: dict[str, Any] = {}
    with measured_postgres() as pg, unpersisted_redis() as redis:
        progress(f"cost: own PostgreSQL on :{pg.port} ({pg.folder}), redis on :{redis.port}")
        admin = psycopg2.connect(pg.dsn("postgres"))
        admin.autocommit = True
        admin.cursor().execute(f"CREATE DATABASE {METER_DATABASE}")
        admin.close()
        stack = build_stack(pg, redis, plan)
        meter: Meter | None = None
        try:
            stack.start()
            stack.configure_double(
                first_token_delay_s=0.0, token_delay_s=TOKEN_DELAY_S, default_tokens=TOKENS
            )
            jwt = stack.token()
            auth = {"jwt": jwt, "key": stack.api_key(jwt)}
            stack.start_worker()
            stack.start_beat()
            progress(f"cost: stack up, logs in {stack.logs}")
            meter = Meter(
                Roles(
                    web=stack.pid_of("web"),
                    worker=stack.pid_of("worker"),
                    beat=stack.pid_of("beat"),
                    postgres=pg.pid,
                    redis=redis.pid,
                    double=stack.pid_of("double"),
                ),
                pg.dsn(METER_DATABASE),
                APP_DATABASE,
                redis.url,
            )
            time.sleep(plan.settle_s)
            progress(f"cost: the idle stack's background over {plan.idle_s:g} s")
            idle = idle_background(meter, plan.idle_s)
            session = Session(stack, meter, auth, others, idle, probe)
            evicted = meter.evicted()
            # Rounds go over every path in turn, so a busy spell of the machine's is shared.
            for n, path in ((n, path) for n in range(plan.rounds) for path in plan.paths):
                if n == 0:
                    warm = partial(ROUTES[path].through, stack.base, auth)
                    progress(f"cost: {path}: warm-up, {plan.warmup} jobs at {max(plan.callers)}")
                    run_jobs(warm, max(plan.callers), plan.warmup)
                    time.sleep(plan.settle_s)
                for callers in plan.callers:
                    result = batch(session, path, callers, plan.jobs_at(callers), plan)
                    batches.append(result | {"round": n + 1})
                    progress(f"cost: round {n + 1}/{plan.rounds}: {headline(result)}")
            evicted = meter.evicted() - evicted
            for path in plan.paths if plan.attribution else ():
                sources[path] = redis_sources(session, path, max(plan.callers), plan.attribution)
        finally:
            if meter is not None:
                meter.close()
            stack.stop()
        meta = {
            "postgres": server_version(pg),
            "redis": redis_version(),
            "statements_evicted": evicted,
            "idle": idle,
            "logs": str(stack.logs),
        }
    meta["minutes"] = (time.time() - started) / 60
    return {"meta": meta, "batches": batches, "redis_sources": sources}


def server_version(pg: ThrowawayPostgres) -> str:
    return subprocess.run(
        [str(pg.bin_dir / "postgres"), "--version"], capture_output=True, text=True
    ).stdout.strip()


def redis_version() -> str:
    return subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.split()[2]


def headline(b: dict[str, Any]) -> str:
    return (
        f"{b['path']} x{b['callers']}: {b['jobs']} jobs ({b['errors']} errors),"
        f" {b['jobs_per_s']:.1f} jobs/s, OllamaMax {b['ollamamax_ms_per_job']:.1f} CPU ms/job"
        f" (web {b['cpu_ms_per_job']['web workers']:.1f}, worker"
        f" {b['cpu_ms_per_job']['worker']:.1f}, PG {b['cpu_ms_per_job']['postgres']:.1f},"
        f" redis {b['cpu_ms_per_job']['redis-server']:.1f}), first token"
        f" +{b['ttft_ms']['added']['p50']:.1f} ms p50, {b['per_job']['statements']:.1f}"
        f" statements, {b['per_job']['redis_commands']:.1f} Redis commands per job"
    )


# --- the report ---------------------------------------------------------------------------


def git(*argv: str) -> str:
    try:
        return subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    # A benchmark stopped with SIGTERM (a timeout, kill) still stops its throwaway
    # PostgreSQL and Redis: SIGTERM raises SystemExit, so the `finally` blocks run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        prog="python -m bench.cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--label", default="after", help="before or after (default: after)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 3 minutes")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"of {','.join(ROUTES)}")
    parser.add_argument("--callers", default="1,20", help="concurrent callers per batch")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per batch (default 600)")
    parser.add_argument(
        "--jobs-single", type=int, default=None, help="jobs at one caller (default 300)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="jobs per path (default 30)")
    parser.add_argument("--direct", type=int, default=None, help="direct calls (default 100)")
    parser.add_argument(
        "--attribution", type=int, default=None, help="jobs per path under MONITOR (default 100)"
    )
    parser.add_argument("--settle", type=float, default=SETTLE_S, help="seconds (default 11)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every batch (medians)")
    parser.add_argument("--web-processes", type=int, default=1, help="WEB_CONCURRENCY")
    parser.add_argument("--slots", type=int, default=20, help="the worker's --slots")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - set(ROUTES)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    quick = args.quick
    plan = Plan(
        paths=paths,
        callers=[int(c) for c in args.callers.split(",")],
        jobs=args.jobs or (100 if quick else 600),
        jobs_single=args.jobs_single or (30 if quick else 300),
        warmup=args.warmup or (10 if quick else 30),
        direct=args.direct or (20 if quick else 100),
        attribution=args.attribution if args.attribution is not None else (30 if quick else 100),
        settle_s=args.settle,
        idle_s=5.0 if quick else 20.0,
        web_processes=args.web_processes,
        slots=args.slots,
        rounds=args.rounds,
    )
    out = args.out or (RESULTS / "quick" if quick else RESULTS)
    meta = {
        "label": args.label,
        "command": shlex.join(["python", "-m", "bench.cost", *sys.argv[1:]]),
        "quick": quick,
        "commit": git("rev-parse", "--short", "HEAD"),
        # The code measured differs from the commit (the benchmark's own files aside)?
        "dirty": git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench")
        not in ("", "unknown"),
        "machine": describe(),
        "started": time.strftime("%Y-%m-%d %H:%M %Z"),
        "plan": plan.__dict__,
        "settings": {
            "WEB_CONCURRENCY": plan.web_processes,
            "worker slots": plan.slots,
            "LOG_LEVEL": "INFO (web, worker, beat)",
            "RATELIMIT_DEFAULT": RATE_LIMIT,
            "double": f"{TOKENS} tokens, {TOKEN_DELAY_S * 1000:g} ms apart, first at once",
        },
    }
    result = measure(plan)
    result["meta"] = meta | result["meta"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cost-{args.label}.json").write_text(json.dumps(result, indent=1))
    path = write(out, args.label)
    progress(f"cost: {out / f'cost-{args.label}.json'} and {path}")
    print(path.read_text())


if __name__ == "__main__":
    main()
