"""Jobs from several users, through the proxy, spread over every GPU host; each host's node is
online with its own fields, and /metrics (the API's and each worker's) and Flower see them all."""

from __future__ import annotations

import json

import requests

from db.models import Role
from tests.cluster.harness import FLOWER_AUTH, FLOWER_PORT, METRICS_TOKEN, Cluster, wait_for
from tests.ollama_double.behaviour import tokens_for
from tests.pipeline.jobs import finished, submit


def test_jobs_from_several_users_spread_over_every_gpu_host(fresh: Cluster) -> None:
    cluster, client = fresh, fresh.client
    # Warm routing runs a job where its model is loaded: every host has it, so every host
    # runs what it takes (a host added cold by another test would hand its jobs on).
    cluster.warm("llama3.2:latest")
    for gpu in cluster.gpus:  # long enough that every slot fills while jobs wait
        gpu.configure(token_delay_s=0.05, default_tokens=12)
    users = [client.login() for _ in range(3)]
    jobs = [
        (headers, f"user {n} job {k}", submit(client.api, headers, prompt=f"user {n} job {k}"))
        for n, headers in enumerate(users)
        for k in range(5)
    ]

    results = [finished(client.api, headers, job["id"], timeout=60) for headers, _, job in jobs]

    for (_, prompt, _), result in zip(jobs, results, strict=True):
        assert result["status"] == "completed", result
        assert result["output"] == "".join(tokens_for(prompt, 12))
    assert {result["worker"] for result in results} == {gpu.node for gpu in cluster.gpus}


def test_every_host_node_is_online_with_its_own_fields(fresh: Cluster) -> None:
    operator = fresh.client.login(Role.OPERATOR)
    nodes = fresh.client.api.get("/api/v1/nodes", headers=operator).get_json()
    by_name = {node["name"]: node for node in nodes["items"]}
    for gpu in fresh.gpus:
        node = by_name[gpu.node]
        assert node["status"] == "online", node
        assert node["hostname"] == gpu.host.name  # its own host, not the machine's
        assert node["worker_name"] == gpu.node
        assert node["gpu_index"] == 0
        assert node["engine_url"] == "http://127.0.0.1:11434"  # its own engine, beside it
        assert node["slots"] == 2
        assert set(node["loaded_models"]) <= {"llama3.2:latest", "qwen3:8b"}


def test_metrics_see_every_worker(fresh: Cluster) -> None:
    metrics = fresh.client.api.get(
        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    ).response.text
    for gpu in fresh.gpus:
        assert f'ollamamax_node_up{{node="{gpu.node}"}} 1.0' in metrics
        # Each worker serves its own /metrics on its host's address, for Prometheus.
        own = fresh.client.direct(gpu.host, 9100).get(
            "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert own.status_code == 200
        assert "ollamamax_inference_requests" in own.response.text


def test_flower_sees_every_worker(fresh: Cluster) -> None:
    """Flower on the data host, through the broker alone (no address of any worker), lists
    each GPU host's worker, behind its basic auth."""
    flower = fresh.client.direct(fresh.data, FLOWER_PORT)

    def listed() -> set[str]:
        try:
            reply = flower.get("/api/workers", params={"refresh": 1}, auth=FLOWER_AUTH)
        except requests.ConnectionError:  # still starting
            return set()
        return set(reply.get_json()) if reply.status_code == 200 else set()

    wanted = {gpu.node for gpu in fresh.gpus}
    wait_for(lambda: wanted <= listed(), 60, "Flower to list every worker")
    assert flower.get("/api/workers").status_code == 401


def test_the_api_hosts_see_the_client_address_the_proxy_forwards(fresh: Cluster) -> None:
    """HAProxy adds X-Forwarded-For; the API hosts trust it from the proxy's address only,
    so the access log and the rate limits see the client, not the proxy."""
    probe = "/cluster-probe-from-the-client"  # a 404 of its own, easy to find in the logs
    for _ in range(4):  # round robin: both API hosts get some
        assert fresh.client.api.get(probe).status_code == 404

    def lines() -> list[dict[str, object]]:
        return [
            json.loads(line)
            for api in fresh.apis
            for line in api.log("web").splitlines()
            if line.startswith("{") and f'"path": "{probe}"' in line
        ]

    seen = wait_for(lambda: len(lines()) >= 4 and lines(), 10, "access lines")
    assert {entry["remote_addr"] for entry in seen} == {fresh.client.host.address}
    assert all(api.log("web").count(probe) for api in fresh.apis)  # both hosts served
