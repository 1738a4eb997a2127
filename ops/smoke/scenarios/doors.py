"""The compatible front doors through the official clients, and the fleet topic socket."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import ollama
import openai

from ops.smoke.context import Context
from ops.smoke.outcomes import Failed, check
from ops.smoke.scenarios.inference import submit
from ops.smoke.ws import Frame

T = TypeVar("T")
TOPICS = ["inference", "model_update", "node_status", "system_metrics"]


def _patiently(call: Callable[[], T]) -> T:
    """The ollama client does not wait out a 429 from the rate limiter; do it for it."""
    for attempt in range(3):
        try:
            return call()
        except ollama.ResponseError as error:
            if error.status_code != 429 or attempt == 2:
                raise Failed(f"ollama client: {error.status_code} {error.error}") from None
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def ollama_chat(ctx: Context) -> str:
    model, key = ctx.model(), ctx.client_key()
    client = ollama.Client(
        host=ctx.options.base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=ctx.options.timeout_s,
        **({"verify": ctx.tls} if ctx.tls else {}),
    )
    messages = [{"role": "user", "content": "Say hello in one short sentence."}]
    options = {"num_predict": 8}
    whole = _patiently(lambda: client.chat(model=model, messages=messages, options=options))
    check(whole.done, "the chat answer is not done")
    check(whole.message.role == "assistant", f"the reply's role is {whole.message.role!r}")
    check(whole.done_reason, "the chat answer has no done_reason")
    parts = _patiently(
        lambda: list(client.chat(model=model, messages=messages, options=options, stream=True))
    )
    check(parts and parts[-1].done, "the streamed chat did not end with a done chunk")
    streamed = "".join(part.message.content or "" for part in parts)
    check(
        whole.message.content or streamed or whole.eval_count,
        "neither chat produced any output",
    )
    return (
        f"chat: {whole.eval_count} tokens, done_reason {whole.done_reason}; streamed chat: "
        f"{len(parts)} chunks, {len(streamed)} chars"
    )


def openai_stream(ctx: Context) -> str:
    model, key = ctx.model(), ctx.client_key()
    client = openai.OpenAI(
        base_url=ctx.options.base_url + "/v1",
        api_key=key,
        timeout=ctx.options.timeout_s,
        max_retries=3,  # it waits out a 429 by itself, as its users rely on
        http_client=openai.DefaultHttpxClient(verify=ctx.tls) if ctx.tls else None,
    )
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello in one short sentence."}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    except openai.APIError as error:
        raise Failed(f"openai client: {type(error).__name__}: {error}") from None
    check(chunks, "the stream had no chunk")
    check(
        all(chunk.id.startswith("chatcmpl-") for chunk in chunks),
        f"a chunk id is not chatcmpl-…: {chunks[0].id}",
    )
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    check(finish, "no chunk carried a finish_reason")
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = next((chunk.usage for chunk in chunks if chunk.usage), None)
    check(usage, "no usage chunk although stream_options.include_usage was set")
    assert usage is not None
    check(usage.completion_tokens >= 1, f"usage counts {usage.completion_tokens} tokens")
    return (
        f"{len(chunks)} chunks, {len(content)} chars, finish_reason {finish[-1]}, "
        f"{usage.completion_tokens} completion tokens"
    )


def ws_topics(ctx: Context) -> str:
    ctx.model()  # a tiny job must show up on the `inference` topic: skip without a model
    with ctx.socket("/ws") as ws:
        deadline = ctx.deadline()
        ws.send({"type": "subscribe", "topics": TOPICS})
        reply = ws.next_non_heartbeat(deadline)
        check(
            reply == {"type": "subscribed", "topics": TOPICS},
            f"subscribing to {TOPICS} answered {reply}",
        )
        ws.send({"type": "ping"})
        while (frame := ws.next_non_heartbeat(deadline)) != {"type": "pong"}:
            check(frame is not None, "the socket closed instead of answering a ping")
        started = time.monotonic()
        job = submit(ctx, "Say one word.", 2)
        job_statuses: list[str] = []
        metrics: Frame | None = None
        while "completed" not in job_statuses or metrics is None:
            frame = ws.next_non_heartbeat(deadline)
            if frame is None:
                raise Failed(f"the socket closed (code {ws.close_code}) while waiting for events")
            if frame.get("topic") == "inference" and frame.get("request_id") == job["id"]:
                job_statuses.append(str(frame.get("status")))
                check(
                    frame.get("status") not in ("failed", "cancelled"),
                    f"the topic's job ended {frame.get('status')}",
                )
            elif frame.get("topic") == "system_metrics":
                metrics = frame
    return (
        f"subscribed to {len(TOPICS)} topics, ping→pong; job {'→'.join(job_statuses)} on "
        f"`inference` in {time.monotonic() - started:.2f}s; system_metrics: "
        f"{metrics.get('nodes')} nodes, {metrics.get('sockets')} sockets"
    )
