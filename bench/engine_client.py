"""What reading one streamed job costs the worker's engine client, in CPU:

    .venv/bin/python -m bench.engine_client [--jobs 300] [--rounds 3] [--out DIR]

The Ollama double (its own process, not counted) answers a generate with 20 tokens 2 ms
apart, first at once, as in bench.cost. In this process, one job after another, and CPU
time (`time.process_time`) per job for each reader:

- `engine`: the worker's client as it runs (workers/engines/ollama.py): the official
  `ollama` client over urllib3 (workers/engines/transport.py), yielding the runner's chunks;
- `engine, httpx transport`: the same client over httpx's own transport (httpcore, h11), as
  it ran before;
- `urllib3 alone`: the bare chunked read of the same answer, no JSON: the floor under any
  client.

Readers take turns within each round, so a neighbour's burst falls on all of them; the
median of the rounds is reported. Results: engine-client.md and .json in --out (default
bench/results/). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import urllib3

from bench.machine import describe, load_average
from bench.stack import RESULTS, ROOT, post_json, progress, wait_http
from tests.conftest import free_port
from workers.engines.ollama import OllamaEngine

TOKENS, TOKEN_DELAY_S = 20, 0.002
MODEL = "llama3.2:latest"
Reader = Callable[[int], int]  # job number -> chunks read


def engine_reader(engine: OllamaEngine) -> Reader:
    def read(n: int) -> int:
        body = {"model": MODEL, "prompt": f"job {n}"}
        return sum(1 for _ in engine.stream("generate", body))

    return read


def bare_reader(base: str) -> Reader:
    pool = urllib3.HTTPConnectionPool("127.0.0.1", int(base.rsplit(":", 1)[1]), maxsize=1)

    def read(n: int) -> int:
        body = json.dumps({"model": MODEL, "prompt": f"job {n}", "stream": True}).encode()
        response = pool.urlopen(
            "POST", "/api/generate", body=body, preload_content=False, retries=False
        )
        chunks = sum(1 for _ in response.read_chunked(decode_content=False))
        response.release_conn()
        return chunks

    return read


def readers(base: str) -> dict[str, Reader]:
    over_httpx = OllamaEngine(base, stall_timeout_s=60)
    over_httpx.client._client._transport = httpx.HTTPTransport()  # httpx's own, as before
    return {
        "engine": engine_reader(OllamaEngine(base, stall_timeout_s=60)),
        "engine, httpx transport": engine_reader(over_httpx),
        "urllib3 alone": bare_reader(base),
    }


def cpu_ms_per_job(read: Reader, jobs: int) -> tuple[float, float]:
    """(CPU ms per job, chunks per job)."""
    for n in range(10):  # connections open, caches warm
        read(n)
    chunks, started = 0, time.process_time()
    for n in range(jobs):
        chunks += read(n)
    return (time.process_time() - started) * 1000 / jobs, chunks / jobs


def measure(jobs: int, rounds: int) -> dict[str, Any]:
    port = free_port()
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.ollama_double", "--port", str(port), "--models", MODEL],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/")
        post_json(
            f"{base}/_double/config",
            {"first_token_delay_s": 0.0, "token_delay_s": TOKEN_DELAY_S, "default_tokens": TOKENS},
        )
        runs: dict[str, list[float]] = {}
        chunks: dict[str, float] = {}
        for round_number in range(1, rounds + 1):
            for name, read in readers(base).items():
                progress(f"engine_client: round {round_number}, {name}, {jobs} jobs")
                ms, chunks[name] = cpu_ms_per_job(read, jobs)
                runs.setdefault(name, []).append(ms)
    finally:
        double.terminate()
        double.wait(10)
    return {
        "jobs": jobs,
        "rounds": rounds,
        "machine": describe(),
        "load": load_average(),
        "readers": {
            name: {"cpu_ms_per_job": statistics.median(ms), "runs": ms, "chunks": chunks[name]}
            for name, ms in runs.items()
        },
    }


def render(result: dict[str, Any], command: str) -> str:
    lines = [
        "# The engine client's CPU per job (`python -m bench.engine_client`)",
        "",
        f"`{command}`: {result['jobs']} jobs of {TOKENS} tokens, {TOKEN_DELAY_S * 1000:g} ms "
        f"apart, per reader and round; {result['machine']}; load {result['load']}.",
        "",
        "| reader | CPU ms per job, median | each round | chunks per job |",
        "|---|---:|---|---:|",
    ]
    for name, figures in result["readers"].items():
        each = ", ".join(f"{ms:.2f}" for ms in figures["runs"])
        lines.append(
            f"| {name} | {figures['cpu_ms_per_job']:.2f} | {each} | {figures['chunks']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.jobs, args.rounds)
    command = "python -m bench.engine_client " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine-client.json").write_text(json.dumps(result, indent=2) + "\n")
    report = render(result, command.strip())
    (args.out / "engine-client.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
