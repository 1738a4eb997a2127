"""Jobs over the native API: submit, follow the WebSocket stream to the end, cancel."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ops.smoke.api import describe
from ops.smoke.context import TERMINAL, Context
from ops.smoke.outcomes import Failed, check
from ops.smoke.ws import NORMAL_CLOSE, Frame

STREAM_TOKENS = 16
# Long enough that the cancel lands mid-generation on any engine; a job that ends on its own
# first makes the scenario fail with that reason.
CANCEL_TOKENS = 4096
LONG_PROMPT = (
    "Write a very long story about a lighthouse keeper and the ships she guides, "
    "chapter by chapter, with as much detail as you can."
)


@dataclass
class Stream:
    frames: list[Frame] = field(default_factory=list)

    def of_type(self, kind: str) -> list[Frame]:
        return [frame for frame in self.frames if frame.get("type") == kind]

    @property
    def seqs(self) -> list[int]:
        return [frame["seq"] for frame in self.frames if "seq" in frame]

    @property
    def statuses(self) -> list[str]:
        return [frame["status"] for frame in self.of_type("status")]

    @property
    def text(self) -> str:
        """The current attempt's text: a `restarted` status withdraws what came before."""
        text = ""
        for frame in self.frames:
            if frame.get("type") == "status" and frame.get("status") == "restarted":
                text = ""
            elif frame.get("type") == "token":
                text += frame.get("text", "")
        return text


def submit(ctx: Context, prompt: str, num_predict: int) -> dict[str, Any]:
    response = ctx.api.call(
        "POST",
        "/api/v1/inference/generate",
        expect=202,
        token=ctx.admin_token(),
        json={"model": ctx.model(), "prompt": prompt, "options": {"num_predict": num_predict}},
    )
    job = response.json()
    ctx.jobs.append(job["id"])
    check(job.get("status") == "queued", f"a new job is {job.get('status')!r}, not queued")
    check(job.get("links", {}).get("ws"), "the submit answer has no links.ws")
    return job  # type: ignore[no-any-return]


def read_job(ctx: Context, job_id: str) -> dict[str, Any]:
    path = f"/api/v1/inference/requests/{job_id}"
    return ctx.api.call("GET", path, token=ctx.admin_token()).json()  # type: ignore[no-any-return]


def _check_exactly_once(stream: Stream) -> None:
    seqs = stream.seqs
    check(seqs, "the stream carried no numbered event")
    # Strictly increasing from 1; it may skip where the relay dropped events of an attempt
    # whose lease was swept while its worker still ran (docs/realtime.md).
    check(
        seqs[0] == 1 and all(a < b for a, b in pairwise(seqs)),
        f"seq does not start at 1 and rise without repeats: {seqs[:40]}",
    )


def inference_stream(ctx: Context) -> str:
    started = time.monotonic()
    job = submit(ctx, "Count from one to twenty, in words.", STREAM_TOKENS)
    stream, first_token_s = Stream(), None
    with ctx.socket(job["links"]["ws"]) as ws:
        deadline = ctx.deadline()
        while (frame := ws.next_non_heartbeat(deadline)) is not None:
            stream.frames.append(frame)
            if frame.get("type") == "token" and first_token_s is None:
                first_token_s = time.monotonic() - started
        close_code = ws.close_code
    if stream.of_type("final"):  # the stored events had expired: only the end is known
        raise Failed(f"the stream sent only a final frame: {stream.of_type('final')[0]}")
    _check_exactly_once(stream)
    check(stream.statuses, "the stream carried no status event")
    check(
        stream.statuses[-1] == "completed",
        f"the job ended {stream.statuses[-1]}: {stream.of_type('status')[-1]}",
    )
    check(close_code == NORMAL_CLOSE, f"the socket closed with {close_code}, not 1000")
    check(stream.of_type("token"), "no token event")
    done = stream.of_type("done")
    check(done, "no done event with the final metrics")
    stored = read_job(ctx, job["id"])
    check(stored["status"] == "completed", f"GET says the job is {stored['status']}")
    check(
        stored["output"] == stream.text,
        f"the stored output {stored['output'][:80]!r} is not the streamed text "
        f"{stream.text[:80]!r}",
    )
    check(
        stored["eval_count"] == done[-1].get("eval_count"),
        f"eval_count: stored {stored['eval_count']}, done event {done[-1].get('eval_count')}",
    )
    return (
        f"completed: {stored['eval_count']} tokens in {len(stream.of_type('token'))} token "
        f"frames, seq 1..{stream.seqs[-1]} in order, statuses {'→'.join(stream.statuses)}, "
        f"first token {first_token_s or 0:.2f}s, total {time.monotonic() - started:.2f}s"
    )


def inference_cancel(ctx: Context) -> str:
    job = submit(ctx, LONG_PROMPT, CANCEL_TOKENS)
    stream = Stream()
    with ctx.socket(job["links"]["ws"]) as ws:
        deadline = ctx.deadline()
        # Cancel mid-generation: once the first token is out.
        while not stream.of_type("token"):
            frame = ws.next_non_heartbeat(deadline)
            check(frame is not None, f"the stream closed before a token: {stream.statuses}")
            assert frame is not None
            stream.frames.append(frame)
            check(
                not TERMINAL.intersection(stream.statuses),
                f"the job ended ({stream.statuses[-1] if stream.statuses else '?'}) before a "
                "token arrived",
            )
        asked = time.monotonic()
        response = ctx.api.request(
            "POST", f"/api/v1/inference/requests/{job['id']}/cancel", token=ctx.admin_token()
        )
        if response.status_code == 409:
            raise Failed(
                f"the job ended on its own before the cancel ({describe(response)}): this "
                f"model stops before {CANCEL_TOKENS} tokens this fast, so the cancel of a "
                "running job could not be tried"
            )
        check(response.status_code == 202, f"cancel answered {describe(response)}")
        cancel = response.json()
        check(cancel.get("status") in ("cancelling", "cancelled"), f"cancel answered {cancel}")
        while (frame := ws.next_non_heartbeat(deadline)) is not None:
            stream.frames.append(frame)
        stopped_s = time.monotonic() - asked
    _check_exactly_once(stream)
    check(
        stream.statuses[-1] == "cancelled",
        f"the job ended {stream.statuses[-1]}, not cancelled (statuses {stream.statuses})",
    )
    stored = read_job(ctx, job["id"])
    check(stored["status"] == "cancelled", f"GET says the job is {stored['status']}")
    check(
        stored["output"] == stream.text,
        "the kept partial output differs from the streamed text",
    )
    return (
        f"cancel answered {cancel['status']} after the first token; cancelled "
        f"{stopped_s:.2f}s later, {len(stream.of_type('token'))} token frames, partial output kept "
        f"({len(stored['output'])} chars)"
    )
