"""Real-model benchmark: end-to-end tokens per second through OllamaMax against the same
llama.cpp server called directly, interleaved in one run.

    .venv/bin/python -m bench.real_model [--runs 10] [--max-tokens 128] [--threads N]

It starts `python -m workers.llama_server` (llama.cpp on Gemma 3 270M, CPU) and a stack
whose worker fronts it (`--engine openai`, one slot: the server has one sequence, so
requests serialize). The same streamed completion ("Once upon a time", max 128 tokens,
temperature 0 so every arm generates the same text) goes three ways, arms rotated each round:

    direct   openai client -> llama.cpp /v1/completions
    openai   openai client -> OllamaMax /v1/completions -> worker -> llama.cpp
    rest+ws  POST /api/v1/inference/generate, then the request's WebSocket to its end

A run's tokens per second is its completion tokens over the wall time from the call to the
stream's end (so queueing, prompt evaluation and the first token count, as a caller sees
them). The server runs with llama.cpp's default thread count unless --threads is given; the
rest of the stack shares the machine's cores with it.

Numbers go to stdout; `measure()` returns them for the full report (`python -m bench`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import openai
import websocket
from openai.types import Completion

from bench.stack import Stack, free_port, post_json, progress, wait_until
from workers.llama_server import MODEL_ALIAS

PROMPT = "Once upon a time"
ARMS = ("direct", "openai", "rest+ws")
Run = dict[str, float]


def stream_completion(client: openai.OpenAI, max_tokens: int) -> Run:
    """One streamed completion; tokens from the usage chunk when the server sends one,
    else one per content chunk (llama.cpp sends one token per chunk)."""
    started = time.perf_counter()
    first: float | None = None
    chunks = 0
    usage: int | None = None
    stream = client.completions.create(
        model=MODEL_ALIAS,
        prompt=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in cast(openai.Stream[Completion], stream):
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].text:
            chunks += 1
            if first is None:
                first = time.perf_counter()
    ended = time.perf_counter()
    return outcome(started, first, ended, usage if usage is not None else chunks)


def rest_and_websocket(stack: Stack, token: str, max_tokens: int) -> Run:
    """Submit over REST, then read the request's WebSocket until its final status."""
    started = time.perf_counter()
    accepted = post_json(
        f"{stack.base}/api/v1/inference/generate",
        {
            "model": MODEL_ALIAS,
            "prompt": PROMPT,
            "options": {"num_predict": max_tokens, "temperature": 0},
        },
        token,
    )
    url = stack.base.replace("http://", "ws://") + f"{accepted['links']['ws']}?token={token}"
    ws = websocket.create_connection(url, timeout=120)
    first: float | None = None
    tokens = 0
    try:
        while True:
            frame = json.loads(ws.recv())
            if frame.get("type") == "token" and first is None:
                first = time.perf_counter()
            elif frame.get("type") == "done":
                tokens = int(frame.get("eval_count") or 0)
            elif frame.get("type") == "status" and frame.get("status") in (
                "completed",
                "failed",
                "cancelled",
            ):
                if frame["status"] != "completed":
                    raise RuntimeError(f"job {accepted['id']} ended {frame['status']}")
                break
    finally:
        ws.close()
    return outcome(started, first, time.perf_counter(), tokens)


def outcome(started: float, first: float | None, ended: float, tokens: int) -> Run:
    first = first or ended
    return {
        "tokens": float(tokens),
        "wall_s": ended - started,
        "ttft_ms": (first - started) * 1000,
        "tokens_per_s": tokens / (ended - started),
        # The decode rate as the caller sees it: tokens after the first over their span.
        "decode_per_s": (tokens - 1) / (ended - first) if ended > first else 0.0,
    }


def start_llama(stack: Stack, threads: int | None) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "workers.llama_server", "--port", str(port)]
    if threads:
        argv += ["--threads", str(threads)]
    stack.spawn("llama", *argv, own_env=False)
    url = f"http://127.0.0.1:{port}"
    process = stack.processes[-1]

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited; see {stack.logs / 'llama.log'}")
        try:
            return bool(openai.OpenAI(base_url=f"{url}/v1", api_key="none").models.list().data)
        except openai.APIError:
            return False

    wait_until(serving, timeout=180)
    return url


def measure(runs: int = 10, max_tokens: int = 128, threads: int | None = None) -> dict[str, Any]:
    stack = Stack(slots=1)
    stack.start()
    try:
        progress("real model: starting llama.cpp (Gemma 3 270M) and a worker in front of it")
        llama_url = start_llama(stack, threads)
        stack.start_worker(engine_url=llama_url, engine="openai")
        token = stack.token()
        key = stack.api_key(token)
        direct = openai.OpenAI(base_url=f"{llama_url}/v1", api_key="none", max_retries=0)
        ours = openai.OpenAI(base_url=f"{stack.base}/v1", api_key=key, max_retries=0)
        arms: dict[str, Callable[[], Run]] = {
            "direct": lambda: stream_completion(direct, max_tokens),
            "openai": lambda: stream_completion(ours, max_tokens),
            "rest+ws": lambda: rest_and_websocket(stack, token, max_tokens),
        }
        for arm in ARMS:  # warm: model pages, prompt cache, connections
            arms[arm]()
        results: dict[str, list[Run]] = {arm: [] for arm in ARMS}
        for n in range(runs):
            order = ARMS[n % 3 :] + ARMS[: n % 3]
            for arm in order:
                run = arms[arm]()
                results[arm].append(run)
            progress(
                f"real model: round {n + 1}/{runs}: "
                + ", ".join(f"{a} {results[a][-1]['tokens_per_s']:.1f} tok/s" for a in ARMS)
            )
        server_threads = threads or llama_threads(stack)
    finally:
        stack.stop()
    medians = {
        arm: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for arm, rs in results.items()
    }
    return {
        "runs": runs,
        "max_tokens": max_tokens,
        "prompt": PROMPT,
        "threads": server_threads,
        "medians": medians,
        "runs_by_arm": results,
        "ratio": {
            arm: medians[arm]["tokens_per_s"] / medians["direct"]["tokens_per_s"] for arm in ARMS
        },
    }


def llama_threads(stack: Stack) -> int:
    """The server's thread count, as it runs (llama.cpp's default when none was given)."""
    with open(f"/proc/{stack.pid_of('llama')}/cmdline", "rb") as cmdline:
        args = cmdline.read().decode().split("\0")
    if "--n_threads" in args:
        return int(args[args.index("--n_threads") + 1])
    from llama_cpp.server.settings import ModelSettings

    return int(ModelSettings.model_fields["n_threads"].default)


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Real model: {result['runs']} runs per arm, {result['max_tokens']} tokens,"
        f" prompt {result['prompt']!r}, llama.cpp threads {result['threads']}",
        "",
        "| arm | tokens | tok/s (end to end) | ratio | TTFT ms | decode tok/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        m = result["medians"][arm]
        lines.append(
            f"| {arm} | {m['tokens']:.0f} | {m['tokens_per_s']:.1f} | {result['ratio'][arm]:.1%}"
            f" | {m['ttft_ms']:.0f} | {m['decode_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="default: llama.cpp's")
    args = parser.parse_args()
    print(render(measure(args.runs, args.max_tokens, args.threads)))


if __name__ == "__main__":
    main()
