"""Pipeline benchmark: submission throughput, and what the pipeline adds to time-to-first-token.

    .venv/bin/python -m bench.pipeline [--seconds 15] [--connections 64] [--streams 20]

It starts its own stack on a scratch database (`<db>_bench`): the Ollama double, one worker
(`python -m workers run`) and the web process (gunicorn, gevent). Then, in one run:

(a) submission: wrk POSTs /api/v1/inference/generate with a JWT (persist + enqueue), next
    to GET /health on the same server (the framework's floor);
(b) first token: N concurrent streams, each from submit to its first token event on Redis
    pub/sub, minus the engine's own time to first token measured directly against the
    double in the same run.

Numbers go to stdout and to bench/results/pipeline.md. Needs `wrk` (Debian package).
`measure()` returns them for the full report (`python -m bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ollama
from redis import Redis
from sqlalchemy import create_engine, text

from bench.meter import machine_cpu, read_procs, tree_cpu
from bench.speed_probe import REFERENCE_MS, SpeedProbe
from bench.stack import RESULTS, Stack, post_json, progress, summary
from workers.events import EventLog

# --- (a) submission throughput ------------------------------------------------------------


# wrk's --latency table stops at 90% and 99%; the p95 goal needs its own line.
P95_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format("p95_us %d\\n", latency:percentile(95)))
end
"""


def wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def number(pattern: str) -> float:
        found = re.search(pattern, out)
        if found is None:
            raise RuntimeError(f"wrk printed no {pattern!r}:\n{out}")
        return float(found.group(1))

    def latency(label: str) -> float:
        found = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if found is None:
            raise RuntimeError(f"wrk printed no {label} latency:\n{out}")
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": latency("50%"),
        "p90_ms": latency("90%"),
        "p95_ms": number(r"p95_us (\d+)") / 1000,
        "p99_ms": latency("99%"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


@dataclass(frozen=True)
class CpuRoots:
    """The processes whose CPU a submission is charged to: the web's gunicorn master (its
    workers are its children), the PostgreSQL postmaster (every backend, short-lived ones
    too, once reaped) and redis-server. PostgreSQL and Redis are the shared ones: what other
    databases on them did meanwhile counts too (nothing, on a quiet machine)."""

    web: int
    postgres: int
    redis: int

    @classmethod
    def of(cls, stack: Stack) -> CpuRoots:
        engine = create_engine(stack.database_url)
        with engine.connect() as connection:
            backend = int(connection.scalar(text("SELECT pg_backend_pid()")))
            postmaster = read_procs()[backend].parent
        engine.dispose()
        redis_pid = int(Redis.from_url(stack.redis_url).info("server")["process_id"])
        return cls(stack.pid_of("web"), postmaster, redis_pid)

    def read(self) -> dict[str, float]:
        procs = read_procs()
        busy, _steal = machine_cpu()
        return {
            "web": tree_cpu(procs, self.web),
            "postgres": tree_cpu(procs, self.postgres),
            "redis": tree_cpu(procs, self.redis),
            "machine": busy,
        }


def charged(
    roots: CpuRoots, probe: SpeedProbe, seconds: float, load: Callable[[], dict[str, float]]
) -> dict[str, Any]:
    """Run `load` for `seconds`; add its CPU ms per request by process (`cpu_ms`) to what it
    returns, and how fast the host ran meanwhile (`speed_probe_ms`, bench/speed_probe.py).
    wrk reports a rate, so the count of requests is its rate times `seconds`."""
    before, probe_before, since = roots.read(), probe.cpu_s(), time.time()
    result = load()
    after = roots.read()
    # The probe's own CPU (about 5 % of a core) is not the load's.
    after["machine"] -= probe.cpu_s() - probe_before
    count = result["rps"] * seconds
    result["cpu_ms"] = {k: (after[k] - before[k]) * 1000 / count for k in after}
    result["speed_probe_ms"] = probe.mean_ms(since, time.time())
    return result


def submission(
    stack: Stack, token: str, api_key: str, seconds: int, connections: int, probe: SpeedProbe
) -> dict[str, Any]:
    """The framework's floor (GET /health), then submissions with a JWT and with an API key;
    each with the CPU a request cost the web process, PostgreSQL, Redis and the machine."""
    body = json.dumps({"model": "flood", "prompt": "hi", "options": {"num_predict": 1}})
    scripts = {}
    for name, credential in (("submit", token), ("submit_api_key", api_key)):
        scripts[name] = stack.logs / f"{name}.lua"
        scripts[name].write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {credential}"\n' + P95_SCRIPT
        )
    plain = stack.logs / "p95.lua"
    plain.write_text(P95_SCRIPT)
    roots = CpuRoots.of(stack)
    url = f"{stack.base}/api/v1/inference/generate"
    load = {
        "health": charged(
            roots, probe, seconds, lambda: wrk(f"{stack.base}/health", seconds, connections, plain)
        )
    }
    for name, script in scripts.items():
        load[name] = charged(
            roots, probe, seconds, lambda script=script: wrk(url, seconds, connections, script)
        )
    return load


# --- (b) time to first token --------------------------------------------------------------


def engine_ttft(stack: Stack, samples: int) -> list[float]:
    client = ollama.Client(host=f"http://127.0.0.1:{stack.double_port}")
    times = []
    for n in range(samples):
        started = time.perf_counter()
        stream = iter(client.generate(model="llama3.2", prompt=f"direct {n}", stream=True))
        next(stream)
        times.append((time.perf_counter() - started) * 1000)
        for _ in stream:  # finish it, as the pipeline's streams do
            pass
    return times


def pipeline_ttft(
    stack: Stack, token: str, streams: int, jobs: int
) -> tuple[list[float], list[float]]:
    """Submit, then follow the request the way the WebSocket relay will: subscribe to its
    channel, then replay what was stored before the subscription, first token wins."""
    redis = Redis.from_url(stack.redis_url)
    events = EventLog(redis, ttl_s=600)
    results: list[float] = []
    submit_ms: list[float] = []
    lock = threading.Lock()
    remaining = list(range(jobs))

    def follow(request_id: str, pubsub: Any, started: float) -> float:
        """Milliseconds from `started` to the first token; returns once the job has ended,
        so that a stream has one job in flight at a time (20 streams = 20 jobs)."""
        pubsub.subscribe(f"omx:req:{request_id}")
        first: float | None = None
        for event in _stored_then_live(events, request_id, pubsub):
            if event["type"] == "token" and first is None:
                first = (time.perf_counter() - started) * 1000
            if event.get("status") in ("completed", "failed", "cancelled"):
                break
        return first or 0.0

    def one_stream() -> None:
        pubsub = redis.pubsub()
        while True:
            with lock:
                if not remaining:
                    return
                n = remaining.pop()
            started = time.perf_counter()
            accepted = post_json(
                f"{stack.base}/api/v1/inference/generate",
                {"model": "llama3.2", "prompt": f"stream {n}", "options": {"num_predict": 4}},
                token,
            )
            answered = time.perf_counter()
            first_ms = follow(accepted["id"], pubsub, started)
            with lock:
                results.append(first_ms)
                submit_ms.append((answered - started) * 1000)
            pubsub.unsubscribe()

    threads = [threading.Thread(target=one_stream) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, submit_ms


def _stored_then_live(events: EventLog, request_id: str, pubsub: Any) -> Iterator[dict[str, Any]]:
    """A request's events: what was stored before the subscription, then live ones."""
    yield from events.replay(request_id)
    for message in pubsub.listen():
        if message["type"] == "message":
            yield json.loads(message["data"])


def stages(stack: Stack) -> dict[str, float]:
    """Where a streamed job's time went, from the stored timestamps (milliseconds, p50)."""
    engine = create_engine(stack.database_url)
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - queued_at)),"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first_token_at - started_at))"
                " FROM inference_requests WHERE model_name = 'llama3.2:latest' AND first_token_at IS NOT NULL"
            )
        ).one()
    engine.dispose()
    return {
        "queued_to_claimed": float(row[0] or 0) * 1000,
        "claimed_to_first_token": float(row[1] or 0) * 1000,
    }


def measure(
    seconds: int = 15,
    connections: int = 64,
    streams: int = 20,
    jobs: int = 200,
    slots: int | None = None,
) -> dict[str, Any]:
    """Both parts on a fresh stack; every figure as a number (milliseconds, requests/s)."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    slots = slots or streams
    # (a) queues thousands of jobs no worker takes. Under a waiting-jobs limit that never
    # binds, each admission would count its owner's queue up to the limit (migration 0011):
    # all of it, a cost a user at the default limit (100) never meets. No limit here.
    stack = Stack(slots=slots, QUOTA_MAX_QUEUED_JOBS="0")
    stack.start()
    try:
        token = stack.token()
        stack.configure_double(first_token_delay_s=0.02, token_delay_s=0.005)
        # (a) runs before any worker exists: it measures the web process alone, and the
        # jobs it queues are on a model the streams in (b) do not use.
        progress(f"pipeline (a): wrk, {connections} connections, {seconds} s per endpoint")
        probe = SpeedProbe()
        try:
            load = submission(stack, token, stack.api_key(token), seconds, connections, probe)
        finally:
            probe.stop()
        stack.start_worker()
        progress(f"pipeline (b): {jobs} jobs over {streams} streams, engine alone first")
        direct = engine_ttft(stack, 50)
        through, submit_ms = pipeline_ttft(stack, token, streams, jobs)
        where = stages(stack)
    finally:
        stack.stop()
    engine = summary(direct)
    total = summary(through)
    return {
        "args": {
            "seconds": seconds,
            "connections": connections,
            "streams": streams,
            "jobs": jobs,
            "slots": slots,
        },
        "load": load,
        "engine": engine,
        "total": total,
        "added": {k: total[k] - engine["p50"] for k in ("p50", "p95", "p99")},
        "submit": summary(submit_ms),
        "where": where,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=None, help="worker slots (default: streams)")
    args = parser.parse_args()
    result = measure(args.seconds, args.connections, args.streams, args.jobs, args.slots)
    report = render(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.md").write_text(report)
    print(report)


def _cpu_row(label: str, load: dict[str, Any]) -> str:
    cpu = load.get("cpu_ms")
    if cpu is None:  # a result written before CPU was measured
        return f"| {label} | | | | | |"
    probe_ms = load.get("speed_probe_ms")
    return (
        f"| {label} | {cpu['web']:.2f} | {cpu['postgres']:.2f} | {cpu['redis']:.2f}"
        f" | {cpu['machine']:.2f} | {f'{probe_ms:.1f}' if probe_ms else ''} |"
    )


def _ceiling(load: dict[str, Any]) -> str:
    cpu = load.get("cpu_ms")
    if cpu is None:
        return ""
    cores = os.cpu_count() or 1
    rate = 1000 * cores / cpu["machine"]
    text = f"At {cores} cores, the machine's CPU per submission allows {rate:.0f} submissions/s."
    probe_ms = load.get("speed_probe_ms")
    if probe_ms:  # the host ran the probe's work in probe_ms, not REFERENCE_MS
        text += (
            f" The speed probe took {probe_ms:.1f} ms meanwhile; at its reference speed"
            f" ({REFERENCE_MS:g} ms) the same work would allow {rate * probe_ms / REFERENCE_MS:.0f}/s."
        )
    return text


def render(result: dict[str, Any]) -> str:
    a, load, where = result["args"], result["load"], result["where"]
    engine, total, added, submit = (
        result["engine"],
        result["total"],
        result["added"],
        result["submit"],
    )
    h, s = load["health"], load["submit"]
    k = load.get("submit_api_key") or s
    return f"""# Pipeline benchmark

`python -m bench.pipeline --seconds {a["seconds"]} --connections {a["connections"]} --streams {a["streams"]} --jobs {a["jobs"]}`
on {os.cpu_count()} cores; web = gunicorn, 2 gevent workers; 1 worker with {a["slots"]} slots; the Ollama double.

## (a) Submission: persist + enqueue, with a JWT and with an API key

| | requests/s | p50 ms | p90 ms | p95 ms | p99 ms | non-2xx |
|---|---:|---:|---:|---:|---:|---:|
| GET /health (framework floor) | {h["rps"]:.0f} | {h["p50_ms"]:.1f} | {h["p90_ms"]:.1f} | {h["p95_ms"]:.1f} | {h["p99_ms"]:.1f} | {h["non_2xx"]:.0f} |
| POST /api/v1/inference/generate (JWT) | {s["rps"]:.0f} | {s["p50_ms"]:.1f} | {s["p90_ms"]:.1f} | {s["p95_ms"]:.1f} | {s["p99_ms"]:.1f} | {s["non_2xx"]:.0f} |
| POST /api/v1/inference/generate (API key) | {k["rps"]:.0f} | {k["p50_ms"]:.1f} | {k["p90_ms"]:.1f} | {k["p95_ms"]:.1f} | {k["p99_ms"]:.1f} | {k["non_2xx"]:.0f} |

Submission reaches {s["rps"] / h["rps"]:.0%} of the floor's throughput. Goal: >= 1000/s, p95 < 50 ms.

CPU ms per request while each ran (wrk itself is in the machine's figure), and the speed
probe's time for its fixed work meanwhile (bench/speed_probe.py; higher: a slower host):

| | web | PostgreSQL | Redis | whole machine | speed probe ms |
|---|---:|---:|---:|---:|---:|
{_cpu_row("GET /health", h)}
{_cpu_row("POST, JWT", s)}
{_cpu_row("POST, API key", k)}

{_ceiling(s)}

## (b) Time to first token at {a["streams"]} concurrent streams

| | p50 ms | p95 ms | p99 ms |
|---|---:|---:|---:|
| engine alone (ollama client -> double) | {engine["p50"]:.1f} | {engine["p95"]:.1f} | {engine["p99"]:.1f} |
| submit -> first token event (Redis pub/sub) | {total["p50"]:.1f} | {total["p95"]:.1f} | {total["p99"]:.1f} |
| added by the pipeline (minus the engine's p50) | {added["p50"]:.1f} | {added["p95"]:.1f} | {added["p99"]:.1f} |

Goal: added p50 <= 10 ms, p99 <= 30 ms.

Where the time goes (p50): the POST itself {submit["p50"]:.1f} ms; queued -> claimed by the worker
{where["queued_to_claimed"]:.1f} ms; claimed -> first token in the worker {where["claimed_to_first_token"]:.1f} ms
(the engine's own first-token time is inside this).
"""


if __name__ == "__main__":
    main()
