"""Warm-model-first routing (issue 17 item 2): the first-token time it saves, against the
engine's cold-load delay, with routing on and off.

    .venv/bin/python -m bench.warm                       # 12 jobs per mode, 2 s load (~2 min)
    .venv/bin/python -m bench.warm --jobs 20 --load-delay-s 3 --out /tmp/warm

A scratch stack (bench/stack.py: database `<db>_bench`, Redis database 14 unless --redis-url
names another; the web under gunicorn) and two Ollama doubles that load models as Ollama does
(`--load-delay-s`: the first request for a model not in memory waits that long and reports
it as load_duration). Node `warm@bench` has the model loaded; node `cold@bench` has it on
disk only, and before each job its engine's memory is emptied (`loaded: []`), as if it had
served other models since. Both workers have 2 slots. Jobs go one at a time
(POST /api/v1/inference/generate, 8 tokens), so a warm slot is always free: with routing on
every job should run warm; with it off (WARM_ROUTING_WAIT_S=0) each job runs wherever the
broker hands it. Time to first token is the stored `first_token_at - queued_at` (one clock,
the database's). Results: warm_routing.md and warm_routing.json in --out (bench/results/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.stack import RESULTS, Stack, get_json, percentile, post_json, progress, wait_http
from tests.conftest import free_port

MODEL = "llama3.2:latest"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _nodes(stack: Stack, token: str) -> dict[str, dict[str, Any]]:
    items = get_json(f"{stack.base}/api/v1/nodes/?per_page=100", token)["items"]
    return {node["name"]: node for node in items}


def _wait(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met")


def _beats(stack: Stack, token: str, name: str, count: int = 2) -> None:
    seen = [_nodes(stack, token)[name]["last_heartbeat_at"]]

    def beat() -> bool:
        now = _nodes(stack, token)[name]["last_heartbeat_at"]
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > count

    _wait(beat)


def run_mode(args: argparse.Namespace, routing_on: bool) -> dict[str, Any]:
    wait_s = str(args.wait_s) if routing_on else "0"
    stack = Stack(
        slots=2,
        web_processes=1,
        redis_url=args.redis_url,
        QUEUE_WHILE_UNAVAILABLE="false",
        HEARTBEAT_INTERVAL_S="1",
        WARM_ROUTING_WAIT_S=wait_s,
        ENGINE_STALL_TIMEOUT_S=str(max(60.0, args.load_delay_s * 3)),
    )
    ports = {"warm": free_port(), "cold": free_port()}
    try:
        stack.start()
        for role, port in ports.items():
            loaded = ["--loaded", MODEL] if role == "warm" else []
            stack.spawn(
                f"double-{role}",
                sys.executable,
                "-m",
                "tests.ollama_double",
                "--port",
                str(port),
                "--models",
                MODEL,
                "--load-delay-s",
                str(args.load_delay_s),
                *loaded,
                own_env=False,
            )
            wait_http(f"http://127.0.0.1:{port}/")
        for role, port in ports.items():
            stack.start_worker(
                f"http://127.0.0.1:{port}", name=f"{role}@bench", process=f"worker-{role}"
            )
        token = stack.token()
        _wait(lambda: MODEL in _nodes(stack, token).get("warm@bench", {}).get("loaded_models", []))
        _beats(stack, token, "cold@bench")
        rows = []
        for index in range(args.jobs):
            post_json(f"http://127.0.0.1:{ports['cold']}/_double/config", {"loaded": []})
            post_json(f"http://127.0.0.1:{ports['warm']}/_double/config", {"loaded": [MODEL]})
            job = post_json(
                f"{stack.base}/api/v1/inference/generate",
                {"model": MODEL, "prompt": f"warm routing {index}", "options": {"num_predict": 8}},
                token,
            )
            url = f"{stack.base}/api/v1/inference/requests/{job['id']}"
            _wait(lambda url=url: get_json(url, token)["status"] in ("completed", "failed"))
            done = get_json(url, token)
            rows.append(
                {
                    "status": done["status"],
                    "worker": done["worker"],
                    "ttft_s": (_at(done["first_token_at"]) - _at(done["queued_at"])).total_seconds()
                    if done.get("first_token_at")
                    else None,
                    "load_s": (done.get("load_duration") or 0) / 1e9,
                }
            )
        stats = {
            role: get_json(f"http://127.0.0.1:{port}/_double/stats") for role, port in ports.items()
        }
    finally:
        stack.stop()
    ttft = [row["ttft_s"] for row in rows if row["ttft_s"] is not None]
    return {
        "routing": "on" if routing_on else "off",
        "warm_routing_wait_s": float(wait_s),
        "jobs": len(rows),
        "completed": sum(row["status"] == "completed" for row in rows),
        "ran_on": dict(Counter(str(row["worker"]).split("@")[0] for row in rows)),
        "cold_loads": len(stats["cold"]["loads"]),
        "ttft_mean_s": statistics.fmean(ttft) if ttft else None,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "rows": rows,
        "logs": str(stack.logs),
    }


def render(report: dict[str, Any]) -> str:
    on, off = report["on"], report["off"]
    saved = off["ttft_mean_s"] - on["ttft_mean_s"]
    lines = [
        "# Warm-model-first routing (bench.warm)",
        "",
        f"{report['when']}, {report['jobs']} jobs per mode, one at a time; the double's "
        f"cold-load delay {report['load_delay_s']} s; commit {report['commit']}.",
        "",
        "| routing | jobs run on (warm / cold node) | cold loads | first token mean | p50 | p95 |",
        "|---|---|---|---|---|---|",
    ]
    for mode in (on, off):
        ran = mode["ran_on"]
        lines.append(
            f"| {mode['routing']} (WARM_ROUTING_WAIT_S={mode['warm_routing_wait_s']:g}) "
            f"| {ran.get('warm', 0)} / {ran.get('cold', 0)} | {mode['cold_loads']} "
            f"| {mode['ttft_mean_s'] * 1000:.0f} ms | {mode['ttft_p50_s'] * 1000:.0f} ms "
            f"| {mode['ttft_p95_s'] * 1000:.0f} ms |"
        )
    lines += [
        "",
        f"**Saved by warm routing: {saved * 1000:.0f} ms of first-token time per job on "
        f"average** ({off['cold_loads']} of {off['jobs']} jobs paid the "
        f"{report['load_delay_s']} s load with routing off, {on['cold_loads']} with it on).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.warm")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--load-delay-s", type=float, default=2.0)
    parser.add_argument("--wait-s", type=float, default=5.0, help="WARM_ROUTING_WAIT_S when on")
    parser.add_argument("--redis-url", default=None, help="default: Redis database 14")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "jobs": args.jobs,
        "load_delay_s": args.load_delay_s,
        "commit": _commit(),
    }
    for routing_on in (True, False):
        progress(f"warm routing {'on' if routing_on else 'off'}: {args.jobs} jobs")
        report["on" if routing_on else "off"] = run_mode(args, routing_on)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "warm_routing.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    (args.out / "warm_routing.md").write_text(text)
    print(text)


def _commit() -> str:
    import subprocess

    from bench.stack import ROOT

    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    main()
