"""Soak: steady mixed load for minutes while the memory of every web and worker process is
sampled, to see whether it stays under its ceiling and flat.

    .venv/bin/python -m bench.soak [--minutes 10] [--jobs-per-s 4] [--door-calls-per-s 1]

A fresh stack (web: gunicorn, 2 gevent workers; one worker with 8 slots; the Ollama double
with a first-token delay and a per-token delay). The load, open loop (arrivals on a clock,
not on completions, so a slow system gets a queue instead of a lighter load):

- `jobs_per_s` native jobs: POST /api/v1/inference/generate, then a WebSocket reader
  follows the request to its final status;
- `door_calls_per_s` front-door calls, alternating the official ollama client (/api/chat,
  streamed) and the official openai client (/v1/chat/completions, streamed).

Every `sample_s` seconds: VmRSS (/proc/<pid>/status) of each gunicorn worker and of the
Celery worker process. The slope is a least-squares fit in MB per minute over the samples
after the warm-up (the first minute, or the first third of a shorter soak).

Numbers go to stdout; `measure()` returns them for the full report (`python -m bench`).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ollama
import openai
import websocket

from bench.front_doors import MODEL, TOKENS, ollama_chat, openai_chat
from bench.stack import Stack, post_json, progress, rss_bytes, summary

FIRST_TOKEN_DELAY_S = 0.05
TOKEN_DELAY_S = 0.01
MB = 1024 * 1024


class Load:
    """The arrivals and what became of them."""

    def __init__(self, stack: Stack, token: str, key: str) -> None:
        self.stack, self.token, self.key = stack, token, key
        self.lock = threading.Lock()
        self.latency_ms: dict[str, list[float]] = {"job": [], "ollama": [], "openai": []}
        self.errors: dict[str, int] = {"job": 0, "ollama": 0, "openai": 0}
        self.first_errors: list[str] = []
        self.ollama = ollama.Client(host=stack.base, headers={"Authorization": f"Bearer {key}"})
        self.openai = openai.OpenAI(base_url=f"{stack.base}/v1", api_key=key, max_retries=0)

    def job(self, n: int) -> None:
        accepted = post_json(
            f"{self.stack.base}/api/v1/inference/generate",
            {"model": MODEL, "prompt": f"soak {n}", "options": {"num_predict": TOKENS}},
            self.token,
        )
        path = f"{accepted['links']['ws']}?token={self.token}"
        ws = websocket.create_connection(
            self.stack.base.replace("http://", "ws://") + path, timeout=60
        )
        try:
            while True:
                frame = json.loads(ws.recv())
                if frame.get("type") == "status" and frame.get("status") in (
                    "completed",
                    "failed",
                    "cancelled",
                ):
                    if frame["status"] != "completed":
                        raise RuntimeError(f"job ended {frame['status']}")
                    return
        finally:
            ws.close()

    def door(self, n: int) -> None:
        call = ollama_chat(self.ollama) if n % 2 == 0 else openai_chat(self.openai)
        for _ in call():
            pass

    def timed(self, kind: str, work: Any, n: int) -> None:
        started = time.perf_counter()
        try:
            work(n)
        except Exception as error:
            with self.lock:
                self.errors[kind] += 1
                if len(self.first_errors) < 5:
                    self.first_errors.append(f"{kind}: {error!r}")
            return
        with self.lock:
            self.latency_ms[kind].append((time.perf_counter() - started) * 1000)


def process_pids(stack: Stack) -> dict[str, int]:
    pids = {f"web {n + 1} (pid {pid})": pid for n, pid in enumerate(stack.web_pids())}
    pids[f"worker (pid {stack.pid_of('worker')})"] = stack.pid_of("worker")
    return pids


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return 0.0
    return sum((t - mean_t) * (m - mean_m) for t, m in points) / spread * 60


def measure(
    minutes: float = 10,
    jobs_per_s: float = 4,
    door_calls_per_s: float = 1,
    sample_s: float = 10,
) -> dict[str, Any]:
    stack = Stack(slots=8)
    stack.start()
    try:
        token = stack.token()
        key = stack.api_key(token)
        stack.configure_double(first_token_delay_s=FIRST_TOKEN_DELAY_S, token_delay_s=TOKEN_DELAY_S)
        stack.start_worker()
        load = Load(stack, token, key)
        pids = process_pids(stack)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        duration = minutes * 60
        progress(
            f"soak: {minutes:g} min, {jobs_per_s:g} jobs/s + {door_calls_per_s:g} door calls/s,"
            f" RSS every {sample_s:g} s of {', '.join(pids)}"
        )
        arrivals = sorted(
            [(n / jobs_per_s, "job", n) for n in range(int(duration * jobs_per_s))]
            + [(n / door_calls_per_s, "door", n) for n in range(int(duration * door_calls_per_s))]
        )
        started = time.monotonic()
        next_sample = 0.0
        with ThreadPoolExecutor(max_workers=64) as pool:
            for at, kind, n in arrivals:
                while True:
                    now = time.monotonic() - started
                    if now >= next_sample:
                        for name, pid in pids.items():
                            samples[name].append((now, rss_bytes(pid) / MB))
                        next_sample += sample_s
                        if int(now) % 60 < sample_s:
                            progress(f"soak: {now / 60:.1f} min, " + rss_line(samples))
                    if now >= at:
                        break
                    time.sleep(max(0.0, min(at, next_sample) - now))
                if kind == "job":
                    pool.submit(load.timed, "job", load.job, n)
                else:
                    name = "ollama" if n % 2 == 0 else "openai"
                    pool.submit(load.timed, name, load.door, n)
            # The last arrivals finish inside the pool's shutdown; then one last sample.
        now = time.monotonic() - started
        for name, pid in pids.items():
            samples[name].append((now, rss_bytes(pid) / MB))
        web_pids_after = stack.web_pids()
    finally:
        stack.stop()
    warm_up = min(60.0, duration / 3)
    processes = {}
    for name, points in samples.items():
        mbs = [mb for _, mb in points]
        processes[name] = {
            "kind": "worker" if name.startswith("worker") else "web",
            "start_mb": mbs[0],
            "end_mb": mbs[-1],
            "max_mb": max(mbs),
            "slope_mb_per_min": slope_mb_per_min([p for p in points if p[0] >= warm_up]),
            "samples": points,
        }
    return {
        "minutes": minutes,
        "jobs_per_s": jobs_per_s,
        "door_calls_per_s": door_calls_per_s,
        "sample_s": sample_s,
        "warm_up_s": warm_up,
        "tokens": TOKENS,
        "engine": {"first_token_delay_s": FIRST_TOKEN_DELAY_S, "token_delay_s": TOKEN_DELAY_S},
        "processes": processes,
        "web_restarted": sorted(web_pids_after)
        != sorted(pid for name, pid in pids.items() if not name.startswith("worker")),
        "requests": {kind: len(values) for kind, values in load.latency_ms.items()},
        "latency_ms": {kind: summary(values) for kind, values in load.latency_ms.items()},
        "errors": load.errors,
        "first_errors": load.first_errors,
    }


def rss_line(samples: dict[str, list[tuple[float, float]]]) -> str:
    return ", ".join(
        f"{name.split(' (')[0]} {points[-1][1]:.0f} MB" for name, points in samples.items()
    )


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Soak: {result['minutes']:g} min, {result['jobs_per_s']:g} jobs/s +"
        f" {result['door_calls_per_s']:g} door calls/s",
        "",
        "| process | start MB | end MB | max MB | slope MB/min |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, p in result["processes"].items():
        lines.append(
            f"| {name} | {p['start_mb']:.1f} | {p['end_mb']:.1f} | {p['max_mb']:.1f}"
            f" | {p['slope_mb_per_min']:+.2f} |"
        )
    lines += ["", f"requests: {result['requests']}, errors: {result['errors']}"]
    for kind, s in result["latency_ms"].items():
        lines.append(f"{kind}: p50 {s['p50']:.0f} ms, p95 {s['p95']:.0f} ms, p99 {s['p99']:.0f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--jobs-per-s", type=float, default=4)
    parser.add_argument("--door-calls-per-s", type=float, default=1)
    parser.add_argument("--sample-s", type=float, default=10)
    args = parser.parse_args()
    print(render(measure(args.minutes, args.jobs_per_s, args.door_calls_per_s, args.sample_s)))


if __name__ == "__main__":
    main()
