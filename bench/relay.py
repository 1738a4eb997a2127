"""Relay benchmark: sockets on one web process, token events per second, publish-to-receipt
latency, memory per idle socket.

    .venv/bin/python -m bench.relay [--idle 900] [--streams 100] [--rate 100] [--seconds 20]

It starts its own web process (gunicorn, ONE gevent worker) on a scratch database and Redis
database. No Celery worker runs: a separate publisher process appends each stream's token
events through the same EventLog script the workers use, stamped with the publish time, so
what is measured is the relay alone: Redis pub/sub -> web process -> socket -> client.

(a) memory: the web process's RSS before and after opening --idle sockets, each following a
    queued request of its own (subscribed, heartbeating, holding nothing else);
(b) throughput and latency: with the idle sockets still open, --streams sockets each follow
    a request whose events arrive at --rate per second for --seconds. Every event carries its
    publish time; the client notes when it arrived. Gaps and repeats in seq are counted.

The client runs in this process on asyncio (the `websockets` library), the publisher in
another; all share the machine's cores with Redis, PostgreSQL and the web process.
A subscriber on Redis itself (another process, a sample of the streams' channels) is the
baseline: publish -> receipt with nothing of ours in between, in the same run.

Numbers go to stdout and to bench/results/relay.md; `measure()` returns them for the full
report (`python -m bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import websockets
from redis import Redis
from sqlalchemy import create_engine, text

from bench.stack import (
    RESULTS,
    Stack,
    cpu_seconds,
    get_json,
    percentile,
    progress,
    rss_bytes,
    summary,
)
from workers.events import CHANNEL, EventLog

CONNECT_BATCH = 50  # sockets opened at once
BASELINE_CHANNELS = 10  # streams the direct Redis subscriber samples


@dataclass
class Stream:
    received: int = 0
    gaps: int = 0
    repeats: int = 0
    last_seq: int = 0
    latencies_ms: list[float] = field(default_factory=list)


def make_requests(stack: Stack, user_id: str, count: int) -> list[str]:
    """Rows for the sockets to follow (the relay authorizes against them)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    engine = create_engine(stack.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO inference_requests (id, user_id, model_name, kind, input, status)"
                " VALUES (:id, :user_id, 'bench:latest', 'generate', '{}', 'running')"
            ),
            [{"id": request_id, "user_id": user_id} for request_id in ids],
        )
    engine.dispose()
    return ids


def publish(redis_url: str, ids: list[str], rate: int, seconds: float, start_at: float) -> None:
    """Each of `ids` gets `rate` token events per second, all streams in one round trip per
    tick (as `len(ids)` workers would publish, minus their per-call overhead)."""
    events = EventLog(Redis.from_url(redis_url), ttl_s=600)
    time.sleep(max(0.0, start_at - time.time()))
    interval = 1.0 / rate
    tick = time.monotonic()
    end = tick + seconds
    while tick < end:
        now = time.time()
        events.publish_many([(rid, "token", {"text": " tok", "sent_at": now}) for rid in ids])
        tick += interval
        time.sleep(max(0.0, tick - time.monotonic()))
    # The terminal status ends every stream.
    events.publish_many([(rid, "status", {"status": "completed"}) for rid in ids])


def subscribe_directly(
    redis_url: str, ids: list[str], ready: Any, results: Any, stop_at: float
) -> None:
    """The baseline: the same events read straight off Redis pub/sub, no relay between."""
    pubsub = Redis.from_url(redis_url).pubsub()
    pubsub.subscribe(*(CHANNEL.format(rid) for rid in ids))
    for _ in ids:  # the subscribe confirmations
        pubsub.get_message(timeout=5)
    ready.set()
    latencies: list[float] = []
    ended = 0
    while ended < len(ids) and time.time() < stop_at:
        message = pubsub.get_message(timeout=1)
        if message is None or message["type"] != "message":
            continue
        arrived = time.time()
        event = json.loads(message["data"])
        if event["type"] == "token":
            latencies.append((arrived - event["sent_at"]) * 1000)
        elif event.get("status") == "completed":
            ended += 1
    results.put(latencies)


async def open_socket(url: str) -> Any:
    return await websockets.connect(url, compression=None, max_queue=None, open_timeout=60)


async def open_many(urls: list[str]) -> list[Any]:
    sockets: list[Any] = []
    for start in range(0, len(urls), CONNECT_BATCH):
        batch = urls[start : start + CONNECT_BATCH]
        sockets.extend(await asyncio.gather(*(open_socket(u) for u in batch)))
    return sockets


async def follow(ws: Any, stream: Stream) -> None:
    async for message in ws:
        arrived = time.time()
        event = json.loads(message)
        seq = event.get("seq")
        if seq is None:
            continue  # heartbeat
        if seq <= stream.last_seq:
            stream.repeats += 1
            continue
        if seq != stream.last_seq + 1:
            stream.gaps += 1
        stream.last_seq = seq
        if event["type"] == "token":
            stream.received += 1
            stream.latencies_ms.append((arrived - event["sent_at"]) * 1000)


async def run(args: argparse.Namespace, stack: Stack, token: str, user_id: str) -> dict[str, Any]:
    pid = stack.web_pids()[0]
    ws_base = stack.base.replace("http://", "ws://")
    idle_ids = make_requests(stack, user_id, args.idle)
    stream_ids = make_requests(stack, user_id, args.streams)

    # Warm the process (imports, pools, the hub) with one socket, then measure.
    warm = await open_socket(f"{ws_base}/ws?token={token}")
    await asyncio.sleep(1)
    rss_before = rss_bytes(pid)
    started = time.monotonic()
    idle = await open_many([f"{ws_base}/ws/inference/{rid}?token={token}" for rid in idle_ids])
    connect_s = time.monotonic() - started
    await asyncio.sleep(3)
    rss_idle = rss_bytes(pid)

    active = await open_many([f"{ws_base}/ws/inference/{rid}?token={token}" for rid in stream_ids])
    streams = [Stream() for _ in active]
    followers = [asyncio.create_task(follow(ws, s)) for ws, s in zip(active, streams, strict=True)]
    ready = multiprocessing.Event()
    baseline: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
    direct = multiprocessing.Process(
        target=subscribe_directly,
        args=(
            stack.redis_url,
            stream_ids[:BASELINE_CHANNELS],
            ready,
            baseline,
            time.time() + args.seconds + 60,
        ),
    )
    direct.start()
    await asyncio.get_running_loop().run_in_executor(None, ready.wait, 30)
    await asyncio.sleep(1)
    cpu_start = cpu_seconds(pid)
    publisher = multiprocessing.Process(
        target=publish,
        args=(stack.redis_url, stream_ids, args.rate, args.seconds, time.time() + 0.5),
    )
    publisher.start()
    await asyncio.get_running_loop().run_in_executor(None, publisher.join)
    await asyncio.wait_for(asyncio.gather(*followers), timeout=60)
    cpu_used = cpu_seconds(pid) - cpu_start
    direct_ms: list[float] = await asyncio.get_running_loop().run_in_executor(
        None, baseline.get, True, 60
    )
    direct.join(timeout=10)
    rss_busy = rss_bytes(pid)
    still_open = sum(1 for ws in idle if ws.state.name == "OPEN")
    for ws in [*idle, warm]:
        await ws.close()

    latencies = [ms for s in streams for ms in s.latencies_ms]
    delivered = sum(s.received for s in streams)
    return {
        "args": vars(args),
        "direct": summary(direct_ms),
        "direct_events": len(direct_ms),
        "sockets": len(idle) + len(active) + 1,
        "idle_still_open": still_open,
        "connect_s": connect_s,
        "rss_before": rss_before,
        "rss_idle": rss_idle,
        "rss_busy": rss_busy,
        "per_idle_socket": (rss_idle - rss_before) / max(1, len(idle)),
        "expected": args.streams * args.rate * args.seconds,
        "delivered": delivered,
        "events_per_s": delivered / args.seconds,
        "gaps": sum(s.gaps for s in streams),
        "repeats": sum(s.repeats for s in streams),
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "web_cpu": cpu_used / args.seconds,
    }


def render(r: dict[str, Any]) -> str:
    mb = 1024 * 1024
    args = argparse.Namespace(**r["args"])
    d = r["direct"]
    return f"""# Relay benchmark

`python -m bench.relay --idle {args.idle} --streams {args.streams} --rate {args.rate} --seconds {args.seconds}`
on {os.cpu_count()} cores; ONE web process (gunicorn, one gevent worker); the publisher, the
client (asyncio, `websockets`), Redis and PostgreSQL share the same cores.

## Sockets and memory

| | |
|---|---:|
| sockets open on the one web process | {r["sockets"]} |
| idle sockets still open at the end | {r["idle_still_open"]} of {args.idle} |
| time to open {args.idle} sockets (auth + subscribe + replay each) | {r["connect_s"]:.1f} s |
| web RSS before / with idle sockets / after the streams | {r["rss_before"] / mb:.1f} / {r["rss_idle"] / mb:.1f} / {r["rss_busy"] / mb:.1f} MB |
| memory per idle socket | {r["per_idle_socket"] / 1024:.1f} KB |

## Token events: {args.streams} streams x {args.rate} events/s for {args.seconds} s

| delivered | per second | gaps | repeats | web CPU (cores) |
|---:|---:|---:|---:|---:|
| {r["delivered"]} of {r["expected"]} | {r["events_per_s"]:.0f} | {r["gaps"]} | {r["repeats"]} | {r["web_cpu"]:.2f} |

| publish -> receipt | p50 ms | p95 ms | p99 ms | max ms |
|---|---:|---:|---:|---:|
| through the relay (WebSocket client) | {r["p50"]:.1f} | {r["p95"]:.1f} | {r["p99"]:.1f} | {r["max"]:.1f} |
| baseline: Redis pub/sub read directly ({BASELINE_CHANNELS} streams, {r["direct_events"]} events) | {d["p50"]:.1f} | {d["p95"]:.1f} | {d["p99"]:.1f} | |

Goals: 1000 sockets on one web process; >= 10,000 token events/s delivered; p99 < 50 ms.
"""


def measure(
    idle: int = 900, streams: int = 100, rate: int = 100, seconds: int = 20
) -> dict[str, Any]:
    args = argparse.Namespace(idle=idle, streams=streams, rate=rate, seconds=seconds)
    stack = Stack(slots=1, web_processes=1, LOG_LEVEL="WARNING")
    stack.start()
    try:
        token = stack.token()
        user_id = get_json(f"{stack.base}/api/v1/users/profile", token)["id"]
        progress(f"relay: {idle} idle sockets, then {streams} streams x {rate}/s for {seconds} s")
        return asyncio.run(run(args, stack, token, user_id))
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=900)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rate", type=int, default=100, help="events per second per stream")
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    report = render(measure(args.idle, args.streams, args.rate, args.seconds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "relay.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
