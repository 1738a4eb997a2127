"""The multi-host harness (tests/cluster/) by hand, and the scale limits docs/deploy.md quotes.

    sudo .venv/bin/python -m bench.cluster up        # build it, print the hosts, Ctrl-C ends it
    sudo .venv/bin/python -m bench.cluster measure   # the three limits, into bench/results/

`measure` builds a cluster (two API hosts behind HAProxy, three GPU hosts with the Ollama
double, one data host) and measures, from the client host:

- jobs/s per API host: submissions accepted (202) per second by one API host called directly,
  then by the proxy in front of both, while the workers run what is accepted;
- events/s per relay process: WebSocket frames one API process delivers per second to
  followers of streaming jobs;
- workers per broker: what one idle worker and one job cost the broker (Redis commands, from
  INFO commandstats), against what the broker serves per second on that machine
  (redis-benchmark from the client host).

Every process shares this machine's cores: the numbers are floors for one core's worth of
each tier, not a capacity plan. The command line and the machine are written beside them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from redis import Redis

from bench.machine import describe
from bench.stack import RESULTS
from tests.cluster.harness import Cluster
from tests.cluster.hosts import Host
from tests.cluster.services import API_PORT
from tests.support.ws import Received, connect, next_frame, token_of

BODY = {"model": "llama3.2", "prompt": "how fast?"}


def _hammer(host: Host, url: str, headers: dict[str, str], seconds: float, threads: int) -> float:
    """Accepted submissions per second from `threads` callers on the client host."""
    accepted = [0] * threads

    def caller(index: int) -> None:
        with host.inside(), requests.Session() as session:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                reply = session.post(url, json=BODY, headers=headers, timeout=30)
                accepted[index] += reply.status_code == 202

    started = time.monotonic()
    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(accepted) / (time.monotonic() - started)


def jobs_per_second(cluster: Cluster, seconds: float, threads: int) -> dict[str, float]:
    headers = cluster.client.login()
    one = f"http://{cluster.apis[0].address}:{API_PORT}/api/v1/inference/generate"
    both = f"{cluster.client.base_url}/api/v1/inference/generate"
    return {
        "one_api_host": _hammer(cluster.client.host, one, headers, seconds, threads),
        "proxy_two_api_hosts": _hammer(cluster.client.host, both, headers, seconds, threads),
    }


def drain(cluster: Cluster, timeout_s: float = 600.0) -> None:
    """Wait until every accepted job has ended, so the next measurement has the fleet."""
    from sqlalchemy import func, select

    from db.models import InferenceRequest

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with cluster.client.database() as database, database.unit_of_work() as session:
            left = session.scalar(
                select(func.count()).where(InferenceRequest.status.in_(["queued", "running"]))
            )
        if not left:
            return
        time.sleep(1)
    raise TimeoutError("the backlog did not drain")


def relay_events_per_second(cluster: Cluster, jobs: int, followers: int) -> dict[str, float]:
    """Frames one API process sends to `followers` sockets on each of `jobs` streaming jobs
    (an event per token: TOKEN_COALESCE_MS is 0 in the harness), counted between the first
    frame any socket got and the last."""
    for gpu in cluster.gpus:
        gpu.configure(token_delay_s=0.005, default_tokens=1000)
    headers = cluster.client.login()
    api = cluster.client.direct(cluster.apis[0], API_PORT)
    ids = [
        api.post("/api/v1/inference/generate", json=BODY, headers=headers).get_json()["id"]
        for _ in range(jobs)
    ]
    frames = [0] * (jobs * followers)
    first, last = [float("inf")] * len(frames), [0.0] * len(frames)
    closes: list[int | None] = [None] * len(frames)

    def follow(index: int, request_id: str) -> None:
        with cluster.client.host.inside():
            ws = connect(api.base_url, f"/ws/inference/{request_id}", token_of(headers), timeout=60)
        received = Received()
        while (frame := next_frame(ws, received)) is not None:
            if frame.get("type") != "heartbeat":
                frames[index] += 1
                first[index] = min(first[index], time.monotonic())
                last[index] = time.monotonic()
        ws.close()
        closes[index] = received.close_code

    readers = [threading.Thread(target=follow, args=(i, ids[i % jobs])) for i in range(len(frames))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    elapsed = max(last) - min(first)
    return {
        "sockets": float(len(frames)),
        "frames": float(sum(frames)),
        "seconds": elapsed,
        "events_per_second": sum(frames) / elapsed,
        # 1000: the job ended and the socket was closed normally; 1013: cut off as too slow
        # a reader (the client host, on the same cores, could not keep up).
        "sockets_closed_normally": float(closes.count(1000)),
        "sockets_cut_off_slow": float(closes.count(1013)),
    }


def _broker_commands(redis: Redis) -> int:
    stats = redis.info("commandstats")
    return sum(int(value["calls"]) for value in stats.values())


def broker_load(cluster: Cluster, seconds: float, jobs: int) -> dict[str, float]:
    """Broker commands per idle worker per second and per job; the broker's own ceiling."""
    for gpu in cluster.gpus:
        gpu.configure(token_delay_s=0.0, default_tokens=8)
    url = cluster.env["CELERY_BROKER_URL"]
    with cluster.client.host.inside(), Redis.from_url(url) as broker:
        before = _broker_commands(broker)
        time.sleep(seconds)
        idle = (_broker_commands(broker) - before) / seconds / len(cluster.gpus)
    headers = cluster.client.login()
    with cluster.client.host.inside(), Redis.from_url(url) as broker:
        before = _broker_commands(broker)
    ids = [
        cluster.client.api.post(
            "/api/v1/inference/generate", json=BODY, headers=headers
        ).get_json()["id"]
        for _ in range(jobs)
    ]
    for request_id in ids:
        while (
            cluster.client.api.get(
                f"/api/v1/inference/requests/{request_id}", headers=headers
            ).get_json()["status"]
            != "completed"
        ):
            time.sleep(0.1)
    with cluster.client.host.inside(), Redis.from_url(url) as broker:
        per_job = (_broker_commands(broker) - before) / jobs
    host, port = url.split("//")[1].split("/")[0].split(":")
    with cluster.client.host.inside():
        done = subprocess.run(
            [
                "redis-benchmark",
                "-h",
                host,
                "-p",
                port,
                "-q",
                "-n",
                "50000",
                "-c",
                "20",
                "-t",
                "lpush,rpop",
                "--csv",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    rows = [line.replace('"', "").split(",") for line in done.stdout.splitlines()[1:]]
    ceiling = min(float(row[1]) for row in rows if len(row) > 1)
    return {
        "idle_worker_commands_per_s": idle,
        "commands_per_job": per_job,
        "broker_commands_per_s": ceiling,
    }


def measure(seconds: float, threads: int) -> dict[str, Any]:
    # Production clocks (the tests shorten them): sweeps and heartbeats are broker and
    # database traffic of their own, and a worker's idle cost is mostly theirs.
    production = {
        "SWEEP_INTERVAL_S": "5",
        "HEARTBEAT_INTERVAL_S": "10",
        "NODE_STALE_AFTER_S": "30",
        "LEASE_TTL_S": "30",
        "TOKEN_COALESCE_MS": "20",
    }
    with Cluster(
        QUOTA_MAX_QUEUED_JOBS="0",
        QUOTA_MAX_RUNNING_JOBS="0",
        QUOTA_MAX_WEBSOCKETS="0",
        **production,
    ) as cluster:
        accepted = jobs_per_second(cluster, seconds, threads)
        drain(cluster)
        relay = relay_events_per_second(cluster, jobs=6, followers=4)
        drain(cluster)
        return {
            "jobs_per_second": accepted,
            "relay": relay,
            "broker": broker_load(cluster, seconds, jobs=50),
        }


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(results, indent=2))
    jobs, relay, broker = results["jobs_per_second"], results["relay"], results["broker"]
    workers = broker["broker_commands_per_s"] / max(broker["idle_worker_commands_per_s"], 1e-9)
    lines = [
        "# Cluster harness: scale limits",
        "",
        f"`{results['command']}` on {results['machine']}.",
        "",
        "| Tier | Measured |",
        "|---|---|",
        f"| API host (1 gevent process), jobs accepted/s | {jobs['one_api_host']:.0f} |",
        f"| Two API hosts behind HAProxy, jobs accepted/s | {jobs['proxy_two_api_hosts']:.0f} |",
        f"| Relay (1 API process), WebSocket events/s to {relay['sockets']:.0f} sockets"
        f" ({relay['sockets_closed_normally']:.0f} ended normally,"
        f" {relay['sockets_cut_off_slow']:.0f} cut off as slow readers)"
        f" | {relay['events_per_second']:.0f} |",
        f"| Broker commands per idle worker per s | {broker['idle_worker_commands_per_s']:.1f} |",
        f"| Broker commands per job | {broker['commands_per_job']:.1f} |",
        f"| Broker (Redis) commands/s, redis-benchmark | {broker['broker_commands_per_s']:.0f} |",
        f"| Idle workers one broker could carry (ceiling / idle cost) | {workers:.0f} |",
    ]
    (out / "cluster.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def bring_up() -> None:
    with Cluster() as cluster:
        for host in cluster.hosts:
            print(f"{host.name:8} {host.address:12} ip netns exec {host.namespace} bash")
        print(f"proxy: {cluster.client.base_url}; logs in {cluster.folder}; Ctrl-C ends it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("action", choices=["up", "measure"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.action == "up":
        bring_up()
        return
    results = measure(args.seconds, args.threads)
    results["command"] = "python -m bench.cluster " + shlex.join(argv or sys.argv[1:])
    results["machine"] = describe()
    write(results, args.out)


if __name__ == "__main__":
    main()
