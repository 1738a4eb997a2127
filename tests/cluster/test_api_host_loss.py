"""An API host killed (SIGKILL, gunicorn and its workers): the proxy sends new calls to the
other; WebSocket followers reconnect through the proxy with `after=<seq>` and miss nothing;
a streaming door call cut mid-answer ends in a clean error and its job still completes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket

from tests.cluster.client import ClientHost
from tests.cluster.harness import Cluster, wait_for
from tests.cluster.hosts import Host
from tests.ollama_double.behaviour import tokens_for
from tests.pipeline.jobs import finished, submit
from tests.support.ws import next_frame, read_until_closed, token_of

TOKENS = 40


@pytest.fixture
def slow(fresh: Cluster) -> Iterator[Cluster]:
    for gpu in fresh.gpus:  # four seconds a job: the kill lands mid-stream
        gpu.configure(token_delay_s=0.1, default_tokens=TOKENS)
    yield fresh
    for api in fresh.apis:  # the killed host serves again for the next test
        if "web" not in api.processes:
            fresh.start_api(api)
    wait_for(lambda: _both_serving(fresh.client), 30, "the proxy to use both API hosts")


def _both_serving(client: ClientHost) -> bool:
    served = {client.api.get("/health").headers.get("X-Served-By") for _ in range(4)}
    return len(served) == 2


def _follow_on(client: ClientHost, victim: Host, path: str, token: str) -> websocket.WebSocket:
    """A WebSocket through the proxy that landed on `victim` (round robin: a few tries)."""
    for _ in range(6):
        ws = client.websocket(path, token)
        if ws.getheaders().get("x-served-by") == victim.name:
            return ws
        ws.close()
    raise AssertionError(f"no WebSocket landed on {victim.name}")


def _stream_on(client: ClientHost, victim: Host, headers: dict[str, str]) -> requests.Response:
    """A streaming Ollama-door call through the proxy answered by `victim`."""
    for attempt in range(6):
        body = {"model": "llama3.2", "prompt": f"door {attempt}", "stream": True}
        with client.host.inside():
            response = requests.post(
                f"{client.base_url}/api/generate",
                json=body,
                headers=headers,
                stream=True,
                timeout=30,
            )
        if response.headers.get("X-Served-By") == victim.name:
            return response
        response.close()
    raise AssertionError(f"no streaming call landed on {victim.name}")


def test_an_api_host_killed_costs_followers_and_new_calls_nothing(slow: Cluster) -> None:
    cluster, client = slow, slow.client
    victim, survivor = cluster.apis
    headers = client.login()
    job = submit(client.api, headers, prompt="followed through a kill")["id"]
    ws = _follow_on(client, victim, f"/ws/inference/{job}", token_of(headers))
    door = _stream_on(client, victim, headers)
    door_job = door.headers["X-OllamaMax-Request-ID"]
    lines = door.iter_lines()
    door_lines = [json.loads(next(lines)) for _ in range(3)]
    before: list[dict[str, Any]] = []
    while len([f for f in before if f.get("type") == "token"]) < 5:
        frame = next_frame(ws)
        assert frame is not None
        if "seq" in frame:
            before.append(frame)

    victim.kill("web")

    # The follower's socket ends; it reconnects through the proxy where it left off.
    while next_frame(ws) is not None:
        pass
    resumed = client.websocket(f"/ws/inference/{job}?after={before[-1]['seq']}", token_of(headers))
    assert resumed.getheaders().get("x-served-by") == survivor.name
    after = read_until_closed(resumed).frames
    frames = before + [f for f in after if "seq" in f]
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no repeat
    text = "".join(f["text"] for f in frames if f["type"] == "token")
    assert text == "".join(tokens_for("followed through a kill", TOKENS))
    assert frames[-1] == {**frames[-1], "type": "status", "status": "completed"}

    # The door call in flight: its connection ends early (no `done` line, no hang, no
    # garbage), and its job completes all the same.
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        door_lines.extend(json.loads(line) for line in lines)
    assert not any(line.get("done") for line in door_lines)
    assert finished(client.api, headers, door_job, timeout=60)["status"] == "completed"

    # New calls: every one answered, by the survivor.
    for k in range(6):
        reply = client.api.post(
            "/api/v1/inference/generate",
            json={"model": "llama3.2", "prompt": f"after the kill {k}"},
            headers=headers,
        )
        assert reply.status_code == 202, reply.get_json()
        assert reply.headers["X-Served-By"] == survivor.name
