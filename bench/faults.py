"""Faults without failures (issue 14), tried as an operator would: a stack of real processes,
jobs in flight, one fault at a time, and what became of every job.

    .venv/bin/python -m bench.faults                      # every fault (~8 min on 2 cores)
    .venv/bin/python -m bench.faults --faults redis,web-kill --jobs 30 --out /tmp/faults

The stack is isolated from the machine's shared servers: a throwaway PostgreSQL (migrated)
and a throwaway Redis with appendonly (as docker/compose.yaml's), both from
tests/support/throwaway.py, which stop and start again on the same port and data. On them:
two Ollama doubles (`bench.double`, 40 tokens 0.1 s apart: a job takes about 4 s), the web
under gunicorn (2 gevent processes), two workers (`python -m workers run --slots 4`,
`a@faults` in front of double A, `b@faults` in front of double B, so that one engine can be
restarted alone) and beat. Production settings otherwise: QUEUE_WHILE_UNAVAILABLE=false, the
rate limiter on (with limits no run reaches), leases, grace periods and sweeps at their
defaults. This process supervises web, workers and beat as compose's `restart:` or
ops/keepalive.py would: whatever exits is started again after a second, and the exit is
recorded.

For each fault: `--jobs` jobs (2/3 POST /api/v1/inference/generate with a JWT, 1/3 the
official `ollama` client streaming /api/generate with an API key, in threads), `--followers`
of the REST jobs followed on /ws/inference/<id> (resuming with ?after=<last seq> whenever the
socket ends before a terminal status, as a client would), then, `--fault-after-s` after the
first job runs, the fault, while `--during` more submissions arrive one a second. Then every
job is waited for (`--wait-s` after the fault is over) and counted from the database: ended
completed, failed (error codes), cancelled, or not ended (lost); completed outputs are
compared with what the double answers for the prompt (it is deterministic); followers and
door streams are checked against the stored result. Refused submissions are not accepted
jobs: they are listed with their status (a 503 while PostgreSQL is down is the contract; a 500
is a bug). The 1-minute load average is sampled every second.

Faults: redis (stopped 5 s, started), postgres (stopped 10 s, started), engine (double A
killed, started again 5 s later on its port), worker-kill (a@faults SIGKILLed), worker-term
(a@faults SIGTERMed), web-kill (one gunicorn worker process SIGKILLed; gunicorn starts
another). Results: bench/results/faults.md and faults.json (`--out`); the processes' logs
stay in the stack's folder (/tmp/omx-bench-*), named at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ollama
import psycopg2
import requests
import websocket

from bench.stack import RESULTS, ROOT, Stack, post_json, progress, wait_http, wait_until
from tests.ollama_double.behaviour import tokens_for
from tests.support.throwaway import ThrowawayPostgres, ThrowawayRedis, free_port

MODEL = "llama3.2"
TOKENS = 40
FIRST_TOKEN_DELAY_S = 0.1
TOKEN_DELAY_S = 0.1  # 0.1 + 39 x 0.1: a job streams for about 4 s
SLOTS = 4
DATABASE = "ollamamax_faults"
JOB_HEADER = "X-OllamaMax-Request-ID"  # web/compat/jobs.py: the door's job, in its headers
TERMINAL = ("completed", "failed", "cancelled")
SUPERVISED = ("web", "worker-a", "worker-b", "beat")
WORKERS = {"worker-a": ("a@faults", "double"), "worker-b": ("b@faults", "double-b")}
RESTART_BACKOFF_S = 1.0  # ops/keepalive.py's first backoff
LOG_FLAGS = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Unrecoverable|\bkeepalive\b")


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def expected_output(prompt: str) -> str:
    return "".join(tokens_for(prompt, TOKENS))


# --- the stack ------------------------------------------------------------------------


class Supervisor(threading.Thread):
    """Starts web, the workers and beat again when they exit, a second later, and records
    each exit. `started` holds each process's log size when it last started, so that its
    "ready." can be looked for after that."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True, name="supervisor")
        self.stack = stack
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.exits: list[dict[str, Any]] = []
        self.started: dict[str, int] = dict.fromkeys(SUPERVISED, 0)
        self.clock = time.monotonic

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            for name in SUPERVISED:
                process = self.stack.processes[self.stack.names.index(name)]
                status = process.poll()
                if status is None:
                    continue
                with self.lock:
                    self.exits.append({"process": name, "status": status, "at": self.clock()})
                progress(f"faults: {name} exited with status {status}; starting it again")
                if self.stopping.wait(RESTART_BACKOFF_S):
                    return
                with self.lock:
                    self.started[name] = self.log_size(name)
                    self.stack.respawn(name)

    def log_size(self, name: str) -> int:
        try:
            return (self.stack.logs / f"{name}.log").stat().st_size
        except OSError:
            return 0

    def ready(self, worker: str) -> bool:
        """The worker has said "ready." since it last started."""
        with (self.stack.logs / f"{worker}.log").open("rb") as log:
            log.seek(self.started[worker])
            return b"ready." in log.read()

    def pid(self, name: str) -> int:
        with self.lock:
            return self.stack.pid_of(name)


@dataclass
class Trial:
    stack: Stack
    pg: ThrowawayPostgres
    redis: ThrowawayRedis
    supervisor: Supervisor
    token: str = ""
    key: str = ""
    double_ports: dict[str, int] = field(default_factory=dict)
    load: list[tuple[float, float]] = field(default_factory=list)

    def configure_engine(self, name: str) -> None:
        post_json(
            f"http://127.0.0.1:{self.double_ports[name]}/_double/config",
            {"first_token_delay_s": FIRST_TOKEN_DELAY_S, "token_delay_s": TOKEN_DELAY_S},
        )

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        connection = psycopg2.connect(self.pg.dsn(DATABASE), connect_timeout=2)
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def jobs(self, prefix: str) -> dict[str, dict[str, Any]]:
        """The fault's jobs as stored, by prompt."""
        rows = self.query(
            "SELECT id, input->>'prompt', status, output, error_code, error, attempt, source,"
            " worker_name FROM inference_requests WHERE input->>'prompt' LIKE %s",
            prefix + "%",
        )
        names = ["id", "prompt", "status", "output", "error_code", "error", "attempt"]
        names += ["source", "worker"]
        return {row[1]: dict(zip(names, (str(row[0]), *row[1:]), strict=True)) for row in rows}

    def counts(self, prefix: str) -> Counter[str]:
        return Counter(job["status"] for job in self.jobs(prefix).values())

    def healthy(self) -> bool:
        try:
            nodes = dict(self.query("SELECT name, status FROM nodes"))
            wait_http(f"http://127.0.0.1:{self.double_ports['double']}/", timeout=2)
        except (psycopg2.Error, TimeoutError):
            return False
        alive = all(
            self.stack.processes[self.stack.names.index(n)].poll() is None for n in SUPERVISED
        )
        ready = all(self.supervisor.ready(w) for w in WORKERS)
        online = all(nodes.get(node) == "online" for node, _ in WORKERS.values())
        return alive and ready and online and len(self.stack.web_pids()) == 2

    def sample_load(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            self.load.append((time.monotonic(), load1()))


def make_stack(pg: ThrowawayPostgres, redis: ThrowawayRedis) -> Stack:
    url = redis.url
    stack = Stack(
        slots=SLOTS,
        web_processes=2,
        database_url=pg.url(DATABASE),
        redis_url=url,
        # Every Redis role on the throwaway: none may fall back to a shared server.
        CELERY_BROKER_URL=url,
        CACHE_REDIS_URL=url,
        RATELIMIT_STORAGE_URL=url,
        LOG_LEVEL="INFO",
        LOG_FORMAT="console",
        RATELIMIT_ENABLED="true",  # as in production, with limits no run reaches
        RATELIMIT_DEFAULT="1000000/minute;100000/second",
        QUEUE_WHILE_UNAVAILABLE="false",
    )
    # Unset, as in production: Celery reads this variable itself, and a value here would
    # give every process a Redis result backend that the code turns off (result_backend=None).
    stack.env.pop("CELERY_RESULT_BACKEND", None)
    return stack


def start_trial(trial: Trial) -> None:
    stack = trial.stack
    stack.start()  # creates and migrates the database; double A ("double"); web
    trial.double_ports = {"double": stack.double_port, "double-b": free_port()}
    stack.spawn(
        "double-b",
        *(sys.executable, "-m", "bench.double", "--models", MODEL),
        *("--port", str(trial.double_ports["double-b"])),
    )
    wait_http(f"http://127.0.0.1:{trial.double_ports['double-b']}/")
    for engine in trial.double_ports:
        trial.configure_engine(engine)
    for process, (node, engine) in WORKERS.items():
        port = trial.double_ports[engine]
        stack.start_worker(engine_url=f"http://127.0.0.1:{port}", name=node, process=process)
    stack.start_beat()
    trial.supervisor.start()
    trial.token = stack.token()
    trial.key = stack.api_key(trial.token)


# --- the callers ----------------------------------------------------------------------


@dataclass
class Submission:
    """One REST submission: POST /api/v1/inference/generate with a JWT."""

    n: int
    prompt: str
    during: bool  # sent while the fault was on
    at: float = 0.0
    status: int | None = None  # None: no answer (the connection failed)
    job: str | None = None
    error: str | None = None


@dataclass
class DoorCall:
    """One call of the official `ollama` client, streaming /api/generate with an API key."""

    n: int
    prompt: str
    during: bool
    at: float = 0.0
    status: int | None = None  # the answer's status, once its headers came
    job: str | None = None  # from JOB_HEADER
    text: str = ""
    done: bool = False
    ended_by: str = ""  # done | refused | error line | transport | no done
    error: str | None = None


@dataclass
class Follower:
    """A WebSocket client of one REST job, resuming after its last seq as a client would."""

    job: str
    prompt: str
    last: int = 0
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    out_of_order: int = 0
    connections: int = 0
    interruptions: Counter[str] = field(default_factory=Counter)
    text: str = ""
    restarts: int = 0
    terminal: str | None = None
    final_frame: bool = False
    errors: list[str] = field(default_factory=list)


def short(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:240]


class FaultRun:
    """One fault's jobs, callers and outcome."""

    def __init__(self, trial: Trial, fault: Fault, args: argparse.Namespace) -> None:
        self.trial, self.fault, self.args = trial, fault, args
        self.prefix = f"faults {fault.name} {uuid.uuid4().hex[:6]} "
        self.lock = threading.Lock()
        self.submissions: list[Submission] = []
        self.doors: list[DoorCall] = []
        self.followers: list[Follower] = []
        self.threads: list[threading.Thread] = []
        self.begun = time.monotonic()
        self.deadline = self.begun + 900.0  # moved to "restored + wait_s" once known
        self.fault_at = self.begun
        self.ws_base = trial.stack.base.replace("http://", "ws://")

    # -- submitting

    def launch(self, n: int, during: bool) -> None:
        """Job n: every third through the Ollama door, the others through REST, a
        follower on the REST jobs whose index picks them."""
        prompt = f"{self.prefix}{n:03d}"
        if n % 3 == 2:
            call = DoorCall(n, prompt, during)
            with self.lock:
                self.doors.append(call)
            self.thread(self.door, call)
        else:
            submission = Submission(n, prompt, during)
            with self.lock:
                self.submissions.append(submission)
            self.thread(self.submit, submission, self.follows(n) and not during)

    def follows(self, n: int) -> bool:
        rest = self.args.jobs - self.args.jobs // 3
        every = max(1, rest // max(1, self.args.followers))
        index = n - (n + 1) // 3  # the how-manieth REST job this is
        return index % every == 0 and index // every < self.args.followers

    def thread(self, target: Callable[..., None], *args: Any) -> None:
        worker = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(worker)
        worker.start()

    def submit(self, submission: Submission, follow: bool) -> None:
        submission.at = time.monotonic()
        body: dict[str, Any] = {"model": MODEL, "prompt": submission.prompt}
        body["options"] = {"num_predict": TOKENS}
        try:
            answer = requests.post(
                f"{self.trial.stack.base}/api/v1/inference/generate",
                json=body,
                headers={"Authorization": f"Bearer {self.trial.token}"},
                timeout=60,
            )
        except requests.RequestException as error:
            submission.error = short(error)
            return
        submission.status = answer.status_code
        try:
            payload = answer.json()
        except ValueError:
            payload = {}
        if answer.status_code == 202:
            submission.job = str(payload["id"])
            if follow:
                follower = Follower(submission.job, submission.prompt)
                with self.lock:
                    self.followers.append(follower)
                self.follow(follower)
        else:
            submission.error = json.dumps(payload.get("error", payload))[:240]

    def door(self, call: DoorCall) -> None:
        def on_response(response: httpx.Response) -> None:
            call.status = response.status_code
            call.job = response.headers.get(JOB_HEADER)

        client = ollama.Client(
            host=self.trial.stack.base,
            headers={"Authorization": f"Bearer {self.trial.key}"},
            timeout=httpx.Timeout(10.0, read=self.args.wait_s + 120),
            event_hooks={"response": [on_response]},
        )
        call.at = time.monotonic()
        try:
            for part in client.generate(
                model=MODEL, prompt=call.prompt, stream=True, options={"num_predict": TOKENS}
            ):
                call.text += part.response or ""
                call.done = call.done or bool(part.done)
            call.ended_by = "done" if call.done else "no done"
        except ollama.ResponseError as error:
            call.error = short(error)
            call.ended_by = "refused" if error.status_code >= 400 else "error line"
        except Exception as error:
            call.error = short(error)
            call.ended_by = "transport"
        finally:
            client.close()

    # -- following

    def follow(self, follower: Follower) -> None:
        backoff = 0.25
        while follower.terminal is None and time.monotonic() < self.deadline:
            url = f"{self.ws_base}/ws/inference/{follower.job}?token={self.trial.token}"
            if follower.last:
                url += f"&after={follower.last}"
            try:
                ws = websocket.create_connection(url, timeout=45)
            except Exception as error:
                follower.interruptions[f"handshake {short(error)[:80]}"] += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 4.0)
                continue
            follower.connections += 1
            try:
                ended = self.read(ws, follower)
            except Exception as error:
                ended = f"cut {type(error).__name__}"
            finally:
                ws.close()
            if follower.terminal is None:
                follower.interruptions[ended] += 1
                time.sleep(backoff)
            else:
                backoff = 0.25

    def read(self, ws: websocket.WebSocket, follower: Follower) -> str:
        """Frames until a terminal status or a `final` frame (then ""), or until the socket
        ends (then how it ended)."""
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                return f"closed {code}"
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            if self.take(json.loads(data), follower):
                return ""

    @staticmethod
    def take(frame: dict[str, Any], follower: Follower) -> bool:
        kind = frame.get("type")
        if kind == "final":
            follower.final_frame = True
            follower.terminal = frame["request"]["status"]
            follower.text = frame["request"].get("output") or ""
            return True
        if kind == "error":
            follower.errors.append(json.dumps(frame)[:240])
            return False  # its close frame follows
        seq = frame.get("seq")
        if seq is None:
            return False  # heartbeat
        if seq in follower.seen:
            follower.duplicates += 1
            return False
        if seq < follower.last:
            follower.out_of_order += 1
        follower.seen.add(seq)
        follower.last = max(follower.last, seq)
        status = frame.get("status") if kind == "status" else None
        if kind == "token":
            follower.text += frame.get("text", "")
        elif status == "restarted":
            follower.text, follower.restarts = "", follower.restarts + 1
        elif status in TERMINAL:
            follower.terminal = status
            return True
        return False

    # -- the trial

    def run(self) -> dict[str, Any]:
        offsets = log_offsets(self.trial)
        for n in range(self.args.jobs):
            self.launch(n, during=False)
        self.wait_for(lambda: self.count("running", "completed") > 0, 60, 0.1)
        running_at = time.monotonic()
        self.wait_for(self.all_answered, 60)
        accepted_at = time.monotonic()
        time.sleep(max(0.0, running_at + self.args.fault_after_s - accepted_at))
        at_fault = self.counts()
        self.fault_at = time.monotonic()
        progress(f"faults: {self.fault.name}: {self.fault.what} (jobs {dict(at_fault)})")
        self.thread(self.trickle)
        notes = self.fault.inject(self.trial)
        restored_at = time.monotonic()
        self.deadline = restored_at + self.args.wait_s
        ended_at = self.wait_ended()
        jobs = self.stored()
        end = time.monotonic()
        result = {
            "fault": self.fault.name,
            "what": self.fault.what,
            "notes": {k: round(v, 1) if isinstance(v, float) else v for k, v in notes.items()},
            "timeline_s": {
                "all_submissions_answered": accepted_at - self.begun,
                "fault": self.fault_at - self.begun,
                "restored": restored_at - self.begun,
                "all_ended": None if ended_at is None else ended_at - self.begun,
                "ended_after_restored": None if ended_at is None else ended_at - restored_at,
            },
            "in_flight_at_fault": {
                "queued": at_fault["queued"],
                "running": at_fault["running"],
                "total": at_fault["queued"] + at_fault["running"],
                "completed_before": at_fault["completed"],
            },
            "load_1m": self.load(end),
            "process_exits": self.exits(),
            "log_lines": flagged_lines(self.trial, offsets),
        }
        result.update(self.outcome(jobs))
        return result

    def all_answered(self) -> bool:
        with self.lock:
            rest = all(s.status is not None or s.error for s in self.submissions)
            doors = all(d.status is not None or d.ended_by for d in self.doors)
        return rest and doors

    def wait_for(self, condition: Callable[[], bool], timeout: float, every: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                progress(f"faults: {self.fault.name}: gave up waiting after {timeout:g} s")
                return
            time.sleep(every)

    def counts(self) -> Counter[str]:
        try:
            return self.trial.counts(self.prefix)
        except psycopg2.Error:
            return Counter()

    def count(self, *statuses: str) -> int:
        counts = self.counts()
        return sum(counts[s] for s in statuses)

    def trickle(self) -> None:
        for i in range(self.args.during):
            time.sleep(max(0.0, self.fault_at + i - time.monotonic()))
            self.launch(self.args.jobs + i, during=True)

    def wait_ended(self) -> float | None:
        """When every job and every caller had ended; None if not by the deadline."""
        said = 0.0
        while time.monotonic() < self.deadline:
            counts = self.counts()
            with self.lock:
                busy = sum(t.is_alive() for t in self.threads)
            if counts and not counts["queued"] + counts["running"] and not busy:
                return time.monotonic()
            if time.monotonic() - said >= 15:
                said = time.monotonic()
                progress(f"faults: {self.fault.name}: jobs {dict(counts)}, {busy} callers busy")
            time.sleep(1.0)
        return None

    def stored(self) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + 60
        while True:
            try:
                return self.trial.jobs(self.prefix)
            except psycopg2.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def load(self, end: float) -> dict[str, float]:
        window = [value for at, value in self.trial.load if self.fault_at <= at <= end]
        return {
            "at_fault": window[0] if window else load1(),
            "max": max(window, default=load1()),
            "end": load1(),
        }

    def exits(self) -> list[dict[str, Any]]:
        with self.trial.supervisor.lock:
            exits = [e for e in self.trial.supervisor.exits if e["at"] >= self.begun]
        return [{**e, "at": round(e["at"] - self.fault_at, 1)} for e in exits]

    # -- what became of the jobs

    def outcome(self, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        statuses = Counter(job["status"] for job in jobs.values())
        failed = [job for job in jobs.values() if job["status"] == "failed"]
        completed = [job for job in jobs.values() if job["status"] == "completed"]
        differs = [j for j in completed if j["output"] != expected_output(j["prompt"])]
        lost = [job for job in jobs.values() if job["status"] not in TERMINAL]
        return {
            "submitted": len(self.submissions) + len(self.doors),
            "submitted_rest": len(self.submissions),
            "submitted_door": len(self.doors),
            "submitted_during": sum(x.during for x in self.submissions)
            + sum(x.during for x in self.doors),
            "accepted_stored": len(jobs),
            "accepted_told": sum(s.status == 202 for s in self.submissions)
            + sum(d.status == 200 for d in self.doors),
            "completed": statuses["completed"],
            "failed": statuses["failed"],
            "failed_codes": dict(Counter(str(job["error_code"]) for job in failed)),
            "failed_jobs": [_brief(job) for job in failed[:10]],
            "cancelled": statuses["cancelled"],
            "lost": len(lost) + len(self.missing(jobs)),
            "lost_jobs": [_brief(job) for job in lost[:10]] + self.missing(jobs),
            "output_differs": len(differs),
            "output_differs_jobs": [_brief(job) for job in differs[:10]],
            "restarted_jobs": sum(int(job["attempt"]) > 1 for job in jobs.values()),
            "refused": self.refused(jobs),
            "followers": self.follower_outcome(jobs),
            "door": self.door_outcome(jobs),
        }

    def missing(self, jobs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Jobs a caller was told of (202, or the door's header) that have no row."""
        ids = {job["id"] for job in jobs.values()}
        told = [s.job for s in self.submissions] + [d.job for d in self.doors]
        return [{"id": job, "status": "no row"} for job in told if job and job not in ids]

    def refused(self, jobs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        refused = [
            ("rest", s.n, s.prompt, s.status, s.error, s.at, s.during)
            for s in self.submissions
            if s.status != 202
        ] + [
            ("ollama", d.n, d.prompt, d.status, d.error, d.at, d.during)
            for d in self.doors
            if d.status is not None and d.status != 200
        ]
        return [
            {
                "door": door,
                "n": n,
                "status": status,
                "error": error,
                "at_s": round(at - self.fault_at, 2),
                "during_fault": during,
                "stored_anyway": jobs.get(prompt, {}).get("status"),
            }
            for door, n, prompt, status, error, at, during in refused
        ]

    def follower_outcome(self, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        by_id = {job["id"]: job for job in jobs.values()}
        text_differs, status_differs, interruptions = [], [], Counter[str]()
        for f in self.followers:
            stored = by_id.get(f.job, {})
            interruptions.update(f.interruptions)
            if f.terminal != stored.get("status"):
                status_differs.append(
                    {"id": f.job, "saw": f.terminal, "stored": stored.get("status")}
                )
            elif f.terminal == "completed" and f.text != stored.get("output"):
                text_differs.append({"id": f.job, "saw": f.text[:80], "final": f.final_frame})
        return {
            "count": len(self.followers),
            "ended": sum(f.terminal is not None for f in self.followers),
            "by_final_frame": sum(f.final_frame for f in self.followers),
            "duplicate_seq": sum(f.duplicates for f in self.followers),
            "out_of_order": sum(f.out_of_order for f in self.followers),
            "text_differs": text_differs,
            "status_differs": status_differs,
            "restarted_seen": sum(f.restarts for f in self.followers),
            "reconnections": sum(max(0, f.connections - 1) for f in self.followers),
            "interruptions": dict(interruptions),
            "error_frames": [e for f in self.followers for e in f.errors][:10],
        }

    def door_outcome(self, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        streams = [d for d in self.doors if d.status in (None, 200)]
        cut = [d for d in streams if d.ended_by != "done"]
        done = [d for d in streams if d.ended_by == "done"]
        return {
            "streams": len(streams),
            "done": len(done),
            "done_text_differs": sum(d.text != expected_output(d.prompt) for d in done),
            "cut": len(cut),
            "cut_with_job_id": sum(d.job is not None for d in cut),
            "cut_before_headers": sum(d.status is None for d in cut),
            "cut_job_completed": sum(
                jobs.get(d.prompt, {}).get("status") == "completed" for d in cut
            ),
            "header_present": any(d.job for d in streams),
            "cuts": [
                {
                    "n": d.n,
                    "ended_by": d.ended_by,
                    "error": d.error,
                    "job_id_header": d.job,
                    "job": jobs.get(d.prompt, {}).get("id"),
                    "job_status": jobs.get(d.prompt, {}).get("status"),
                    "submitted_at_s": round(d.at - self.fault_at, 2),
                }
                for d in cut
            ],
        }


def _brief(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job["id"],
        "status": job["status"],
        "error_code": job["error_code"],
        "error": (job["error"] or "")[:200] or None,
        "attempt": job["attempt"],
        "worker": job["worker"],
        "source": job["source"],
    }


def log_offsets(trial: Trial) -> dict[Path, int]:
    paths = [*trial.stack.logs.glob("*.log"), trial.pg.log, trial.redis.log]
    return {path: path.stat().st_size for path in paths if path.exists()}


def flagged_lines(trial: Trial, offsets: dict[Path, int], keep: int = 8) -> dict[str, Any]:
    """Warnings, errors and tracebacks each process logged during the fault, by message (ids,
    numbers and times taken out): how many of each, and one as logged."""
    found: dict[str, Any] = {}
    for path in [*trial.stack.logs.glob("*.log"), trial.pg.log, trial.redis.log]:
        if not path.exists():
            continue
        with path.open("rb") as log:
            log.seek(offsets.get(path, 0))
            lines = log.read().decode(errors="replace").splitlines()
        flagged = [line for line in lines if LOG_FLAGS.search(line)]
        if not flagged:
            continue
        kinds: Counter[str] = Counter()
        example: dict[str, str] = {}
        for line in flagged:
            kind = _message_kind(line)
            kinds[kind] += 1
            example.setdefault(kind, line[:300])
        found[path.stem] = {
            "count": len(flagged),
            "messages": [
                {"count": n, "example": example[kind]} for kind, n in kinds.most_common(keep)
            ],
        }
    return found


def _message_kind(line: str) -> str:
    line = re.sub(r"^\[?[\d:, -]+(\]|\s)", "", line)  # the time
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{32}", "<id>", line)
    return re.sub(r"\d+(\.\d+)?", "N", line)


# --- the faults -----------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    inject: Callable[[Trial], dict[str, Any]]  # returns once the fault is over


def restart_redis(trial: Trial) -> dict[str, Any]:
    stopping = time.monotonic()
    trial.redis.stop()
    stopped = time.monotonic()
    time.sleep(5.0)
    trial.redis.start()
    return {"stop_took_s": stopped - stopping, "down_s": time.monotonic() - stopped}


def stop_postgres(trial: Trial) -> dict[str, Any]:
    stopping = time.monotonic()
    trial.pg.stop()
    stopped = time.monotonic()
    time.sleep(10.0)
    trial.pg.start()
    return {"stop_took_s": stopped - stopping, "down_s": time.monotonic() - stopped}


def restart_engine(trial: Trial) -> dict[str, Any]:
    stack = trial.stack
    process = stack.processes[stack.names.index("double")]
    process.kill()
    process.wait()
    killed = time.monotonic()
    time.sleep(5.0)
    stack.respawn("double")
    wait_http(f"http://127.0.0.1:{trial.double_ports['double']}/")
    trial.configure_engine("double")  # a new process: its knobs are the defaults again
    return {"engine": "double A (a@faults)", "down_s": time.monotonic() - killed}


def kill_worker(trial: Trial) -> dict[str, Any]:
    return _signal_worker(trial, signal.SIGKILL, 30)


def stop_worker(trial: Trial) -> dict[str, Any]:
    return _signal_worker(trial, signal.SIGTERM, 120)


def _signal_worker(trial: Trial, how: signal.Signals, timeout: float) -> dict[str, Any]:
    supervisor = trial.supervisor
    pid = supervisor.pid("worker-a")
    sent = time.monotonic()
    os.kill(pid, how)
    wait_until(lambda: supervisor.pid("worker-a") != pid, timeout)
    restarted = time.monotonic()
    wait_until(lambda: supervisor.ready("worker-a"), 60)
    return {
        "worker": "a@faults",
        "pid": pid,
        "signal": how.name,
        "exited_and_restarted_after_s": restarted - sent,
        "ready_after_s": time.monotonic() - sent,
    }


def kill_web_process(trial: Trial) -> dict[str, Any]:
    before = trial.stack.web_pids()
    victim = before[0]
    sent = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(trial.stack.web_pids()) - set(before)) == 1, 60)
    return {"killed": victim, "replaced_after_s": time.monotonic() - sent}


FAULTS = {
    fault.name: fault
    for fault in (
        Fault("redis", "Redis stopped (SHUTDOWN) 5 s, started on its port", restart_redis),
        Fault("postgres", "PostgreSQL stopped (fast) 10 s, started", stop_postgres),
        Fault("engine", "engine A SIGKILLed, started 5 s later on its port", restart_engine),
        Fault("worker-kill", "worker a@faults SIGKILLed (supervisor starts it)", kill_worker),
        Fault("worker-term", "worker a@faults SIGTERMed (supervisor starts it)", stop_worker),
        Fault("web-kill", "one gunicorn worker process SIGKILLed", kill_web_process),
    )
}


# --- the report -----------------------------------------------------------------------


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(codes.items())) or "-"


def _refusals(refused: list[dict[str, Any]]) -> str:
    statuses = Counter(f"{r['door']} {r['status'] or 'no answer'}" for r in refused)
    return ", ".join(f"{n} x {what}" for what, n in sorted(statuses.items())) or "0"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render(report: dict[str, Any]) -> str:
    meta = report["run"]
    lines = [
        "# Faults without failures (issue 14)",
        "",
        f"`{' '.join(['python -m bench.faults', meta['argv']]).strip()}` on {meta['date']}, commit {meta['commit']}"
        f" ({meta['dirty_files']} files changed in the working tree), {meta['cpus']} CPUs;"
        f" the whole run took {meta['duration_s']:.0f} s, the 1-minute load average"
        f" {meta['load_1m']['before']:.2f} before it, {meta['load_1m']['max']:.2f} at most"
        f" during it. Each fault: {meta['jobs']} jobs"
        f" (2/3 REST, 1/3 the `ollama` client through the Ollama door) plus {meta['during']}"
        f" submitted one a second from the fault on; {meta['followers']} REST jobs followed"
        " on their WebSocket. A job: 40 tokens 0.1 s apart (about 4 s); two workers of 4"
        " slots, each in front of its own double. How to read it: docs/benchmarks.md, Faults.",
        "",
        "| fault | submitted | accepted | in flight at fault | completed | failed (codes)"
        " | cancelled | lost | output differs | restarted | refused at submit | ended after"
        " restore s | load 1m at fault → max |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in report["faults"]:
        flight = r["in_flight_at_fault"]
        lines.append(
            f"| {r['fault']} | {r['submitted']} | {r['accepted_stored']} |"
            f" {flight['total']} ({flight['running']} running) | {r['completed']} |"
            f" {r['failed']} ({_codes(r['failed_codes'])}) | {r['cancelled']} | {r['lost']} |"
            f" {r['output_differs']} | {r['restarted_jobs']} | {_refusals(r['refused'])} |"
            f" {_f(r['timeline_s']['ended_after_restored'])} |"
            f" {r['load_1m']['at_fault']:.2f} → {r['load_1m']['max']:.2f} |"
        )
    lines += [
        "",
        "Callers: WebSocket followers (seq seen twice / out of order / text or status not"
        " the stored one; reconnections) and Ollama-door streams (cut: of them with the job's"
        f" id in `{JOB_HEADER}`, cut before headers, whose job completed anyway).",
        "",
        "| fault | followers ended | dup seq | out of order | text differs | status differs"
        " | reconnections | door streams done | cut | cut with id | cut before headers"
        " | cut, job completed | done text differs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["faults"]:
        fo, do = r["followers"], r["door"]
        lines.append(
            f"| {r['fault']} | {fo['ended']}/{fo['count']} | {fo['duplicate_seq']} |"
            f" {fo['out_of_order']} | {len(fo['text_differs'])} | {len(fo['status_differs'])} |"
            f" {fo['reconnections']} | {do['done']}/{do['streams']} | {do['cut']} |"
            f" {do['cut_with_job_id']} | {do['cut_before_headers']} | {do['cut_job_completed']} |"
            f" {do['done_text_differs']} |"
        )
    for r in report["faults"]:
        lines += ["", *details(r)]
    lines += ["", f"Logs of the run: `{meta['logs']}` (kept after it)."]
    return "\n".join(lines) + "\n"


def details(r: dict[str, Any]) -> list[str]:
    out = [f"## {r['fault']}: {r['what']}", ""]
    t = r["timeline_s"]
    notes = ", ".join(f"{k} {v}" for k, v in r["notes"].items())
    out.append(
        f"Fault at {t['fault']:.1f} s from the first submission (all {r['submitted'] - r['submitted_during']}"
        f" answered at {t['all_submissions_answered']:.1f} s), over at {t['restored']:.1f} s;"
        f" every job and caller had ended at {_f(t['all_ended'])} s. ({notes})"
    )
    out.append("")
    for exit_ in r["process_exits"]:
        out.append(
            f"- {exit_['process']} exited with status {exit_['status']} at"
            f" {exit_['at']:+.1f} s from the fault, and was started again"
        )
    for job in r["failed_jobs"] + r["lost_jobs"] + r["output_differs_jobs"]:
        out.append(f"- job {json.dumps(job)}")
    refusals = Counter(
        (x["door"], x["status"], re.sub(r"\b[0-9a-f]{32}\b", "<id>", str(x["error"])))
        for x in r["refused"]
    )
    for (door, status, error), n in refusals.items():
        answer = status or "no answer"
        out.append(f"- refused at submit, {n} x {door} {answer}: `{error}`")
    cuts = Counter(
        (
            c["ended_by"],
            re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", str(c["error"])),
            c["job_id_header"] is not None,
            c["job_status"],
        )
        for c in r["door"]["cuts"]
    )
    for (how, error, header, status), n in cuts.items():
        out.append(
            f"- door stream cut ({how}), {n} x: `{error}`; job id in the headers: {header};"
            f" the job ended {status}"
        )
    fo = r["followers"]
    if fo["interruptions"]:
        out.append(f"- follower sockets that ended early: {json.dumps(fo['interruptions'])}")
    for item in fo["text_differs"] + fo["status_differs"] + fo["error_frames"]:
        out.append(f"- follower: {json.dumps(item)}")
    logs = [
        f"  - {name}, {m['count']} x: `{m['example']}`"
        for name, found in r["log_lines"].items()
        for m in found["messages"][:4]
    ]
    if logs:
        out += ["- warnings and errors logged meanwhile (the most frequent, one of each):", *logs]
    return out


# --- main ---------------------------------------------------------------------------


def git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout


def run_faults(args: argparse.Namespace, names: list[str]) -> tuple[list[dict[str, Any]], Trial]:
    """Each fault in turn on one stack, once it is healthy again after the one before."""
    results: list[dict[str, Any]] = []
    with ThrowawayPostgres() as pg, ThrowawayRedis() as redis:
        stack = make_stack(pg, redis)
        trial = Trial(stack, pg, redis, Supervisor(stack))
        stop = threading.Event()
        try:
            start_trial(trial)
            threading.Thread(target=trial.sample_load, args=(stop,), daemon=True).start()
            progress(f"faults: stack up (logs in {stack.logs}); faults: {', '.join(names)}")
            for name in names:
                healthy = True
                try:
                    wait_until(trial.healthy, 120)
                except TimeoutError:
                    healthy = False
                    progress(f"faults: the stack is not healthy before {name}; going on")
                result = FaultRun(trial, FAULTS[name], args).run()
                result["healthy_before"] = healthy
                results.append(result)
                progress(f"faults: {name}: {one_line(result)}")
        finally:
            stop.set()
            trial.supervisor.stopping.set()
            if trial.supervisor.is_alive():
                trial.supervisor.join(10)
            stack.stop()
    return results, trial


def one_line(r: dict[str, Any]) -> str:
    return (
        f"{r['accepted_stored']} accepted, {r['completed']} completed, {r['failed']} failed"
        f" {r['failed_codes'] or ''}, {r['cancelled']} cancelled, {r['lost']} lost,"
        f" {r['output_differs']} outputs differ, refused {_refusals(r['refused'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order")
    parser.add_argument("--jobs", type=int, default=66, help="jobs in flight at each fault")
    parser.add_argument("--during", type=int, default=10, help="submissions during the fault")
    parser.add_argument("--followers", type=int, default=10, help="REST jobs followed on WS")
    parser.add_argument("--fault-after-s", type=float, default=1.5)
    parser.add_argument("--wait-s", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", type=Path, help="only write faults.md again from this JSON")
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.render.read_text())
        (args.out / "faults.md").write_text(render(report))
        return
    names = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    begun, load_before = time.monotonic(), load1()
    results, trial = run_faults(args, names)
    loads = [value for _, value in trial.load]
    report = {
        "run": {
            "argv": " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "commit": git("rev-parse", "--short", "HEAD").strip(),
            "dirty_files": len(git("status", "--porcelain").splitlines()),
            "cpus": os.cpu_count(),
            "duration_s": time.monotonic() - begun,
            "jobs": args.jobs,
            "during": args.during,
            "followers": args.followers,
            "wait_s": args.wait_s,
            "engine": {
                "tokens": TOKENS,
                "first_token_delay_s": FIRST_TOKEN_DELAY_S,
                "token_delay_s": TOKEN_DELAY_S,
            },
            "slots": SLOTS,
            "load_1m": {"before": load_before, "max": max(loads, default=0.0), "end": load1()},
            "logs": str(trial.stack.logs),
        },
        "faults": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / "faults.md").write_text(render(report))
    progress(f"faults: {time.monotonic() - begun:.0f} s; results in {args.out}/faults.md")


if __name__ == "__main__":
    main()
