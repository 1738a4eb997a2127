"""Front-door benchmark: the official clients through OllamaMax against the same clients
calling the engine directly, in the same run.

    .venv/bin/python -m bench.front_doors [--concurrency 8] [--seconds 20] [--rounds 2]

A fresh stack (web: gunicorn, 2 gevent workers; one worker; the Ollama double with a
first-token delay and a per-token delay, so streams have the shape of a model's). Three
doors, each called with its official client, streamed:

    ollama  /api/chat              ollama.Client(host=OllamaMax, key)  vs  ollama.Client(host=double)
    ollama  /api/generate          (same)
    openai  /v1/chat/completions   openai.OpenAI(base_url=OllamaMax/v1, key)  vs  (base_url=double/v1)

Each phase keeps `concurrency` callers busy for `seconds`, one request after another (a
closed loop: throughput is requests completed per second at that concurrency). Direct and
through phases alternate, `rounds` times each, so drift on the machine hits both alike.
Per request: time to the first content chunk (TTFT) and to the end of the stream.

Numbers go to stdout; `measure()` returns them for the full report (`python -m bench`).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, cast

import ollama
import openai
from openai.types.chat import ChatCompletionChunk

from bench.stack import Stack, progress, summary

MODEL = "llama3.2"
TOKENS = 32
FIRST_TOKEN_DELAY_S = 0.02
TOKEN_DELAY_S = 0.005
MESSAGES = [{"role": "user", "content": "Tell me a short story about a lighthouse."}]

Call = Callable[[], Iterable[str]]  # one streamed request; yields its content pieces


def ollama_chat(client: ollama.Client) -> Call:
    def call() -> Iterable[str]:
        for part in client.chat(
            model=MODEL, messages=MESSAGES, options={"num_predict": TOKENS}, stream=True
        ):
            yield part.message.content or ""

    return call


def ollama_generate(client: ollama.Client) -> Call:
    def call() -> Iterable[str]:
        for part in client.generate(
            model=MODEL, prompt=MESSAGES[0]["content"], options={"num_predict": TOKENS}, stream=True
        ):
            yield part.response or ""

    return call


def openai_chat(client: openai.OpenAI) -> Call:
    def call() -> Iterable[str]:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=TOKENS,
            stream=True,
        )
        for chunk in cast(openai.Stream[ChatCompletionChunk], stream):
            if chunk.choices:
                yield chunk.choices[0].delta.content or ""

    return call


DOORS: dict[str, tuple[str, Callable[[str, str | None], Call]]] = {
    "ollama /api/chat": (
        "ollama",
        lambda host, key: ollama_chat(ollama.Client(host=host, headers=auth(key))),
    ),
    "ollama /api/generate": (
        "ollama",
        lambda host, key: ollama_generate(ollama.Client(host=host, headers=auth(key))),
    ),
    "openai /v1/chat/completions": (
        "openai",
        lambda host, key: openai_chat(
            openai.OpenAI(base_url=f"{host}/v1", api_key=key or "ollama", max_retries=0)
        ),
    ),
}


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def timed(call: Call) -> tuple[float, float, int]:
    """(ms to the first content piece, ms to the end of the stream, pieces with content)."""
    started = time.perf_counter()
    first: float | None = None
    pieces = 0
    for text in call():
        if text:
            pieces += 1
            if first is None:
                first = time.perf_counter()
    ended = time.perf_counter()
    return ((first or ended) - started) * 1000, (ended - started) * 1000, pieces


def phase(make_call: Callable[[], Call], concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` callers, each with its own client, in a closed loop for `seconds`."""
    ttft: list[float] = []
    total: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    window = [0.0, 0.0]  # start, deadline: set when the last caller is warm

    def open_window() -> None:
        window[0] = time.perf_counter()
        window[1] = window[0] + seconds

    barrier = threading.Barrier(concurrency, action=open_window)

    def caller() -> None:
        call = make_call()
        try:
            timed(call)  # warm: connection, first-use costs
        except Exception as error:
            with lock:
                errors.append(repr(error))
        barrier.wait()
        while time.perf_counter() < window[1]:
            try:
                first_ms, total_ms, _ = timed(call)
            except Exception as error:
                with lock:
                    errors.append(repr(error))
                continue
            with lock:
                ttft.append(first_ms)
                total.append(total_ms)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - window[0]
    return {"ttft": ttft, "total": total, "errors": errors, "elapsed": elapsed}


def measure(concurrency: int = 8, seconds: float = 20, rounds: int = 2) -> dict[str, Any]:
    stack = Stack(slots=concurrency * 2)
    stack.start()
    try:
        token = stack.token()
        key = stack.api_key(token)
        stack.configure_double(first_token_delay_s=FIRST_TOKEN_DELAY_S, token_delay_s=TOKEN_DELAY_S)
        stack.start_worker()
        direct_host = f"http://127.0.0.1:{stack.double_port}"
        doors: dict[str, Any] = {}
        for door, (client, make) in DOORS.items():
            runs: dict[str, list[dict[str, Any]]] = {"direct": [], "ours": []}
            for n in range(rounds):
                for side, host, credential in (
                    ("direct", direct_host, None),
                    ("ours", stack.base, key),
                ):
                    progress(
                        f"front doors: {door} {side} (round {n + 1}/{rounds}),"
                        f" {concurrency} callers x {seconds:g} s"
                    )
                    runs[side].append(phase(partial(make, host, credential), concurrency, seconds))
            doors[door] = {
                "client": client,
                **{side: combine(results) for side, results in runs.items()},
            }
    finally:
        stack.stop()
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "rounds": rounds,
        "tokens": TOKENS,
        "engine": {"first_token_delay_s": FIRST_TOKEN_DELAY_S, "token_delay_s": TOKEN_DELAY_S},
        "doors": doors,
    }


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [ms for r in results for ms in r["ttft"]]
    total = [ms for r in results for ms in r["total"]]
    elapsed = sum(r["elapsed"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    return {
        "requests": len(total),
        "rps": len(total) / elapsed if elapsed else 0.0,
        "ttft": summary(ttft),
        "total": summary(total),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Front doors: {result['concurrency']} concurrent callers, {result['tokens']} tokens"
        f" per answer, {result['rounds']} x {result['seconds']:g} s per side",
        "",
        "| door | side | req/s | TTFT p50 | p95 | p99 | total p50 | p95 | p99 | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for door, sides in result["doors"].items():
        for side in ("direct", "ours"):
            r = sides[side]
            t, a = r["ttft"], r["total"]
            lines.append(
                f"| {door} | {side} | {r['rps']:.1f} | {t['p50']:.1f} | {t['p95']:.1f}"
                f" | {t['p99']:.1f} | {a['p50']:.1f} | {a['p95']:.1f} | {a['p99']:.1f}"
                f" | {r['errors']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = measure(args.concurrency, args.seconds, args.rounds)
    print(render(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
