"""Tried as an operator would: a fourth GPU host brought up beside a running fleet takes jobs,
and nothing else is restarted or told about it."""

from __future__ import annotations

from tests.cluster.harness import Cluster
from tests.pipeline.jobs import finished, submit


def _pids(cluster: Cluster) -> dict[str, int]:
    return {
        f"{host.name}/{label}": process.pid
        for host in cluster.hosts
        for label, process in host.processes.items()
        if process.poll() is None
    }


def test_a_fourth_gpu_host_added_to_a_running_fleet_takes_jobs(fresh: Cluster) -> None:
    """The newcomer's engine has no model loaded. Warm routing sends what it receives to the
    hosts that have the model loaded while they have free slots; once they have all stayed busy
    for WARM_ROUTING_WAIT_S, it loads the model itself. So the fleet is kept busy for several
    times that wait: 30 jobs of a second each on the old hosts' 6 slots."""
    cluster, client = fresh, fresh.client
    before = _pids(cluster)

    added = cluster.add_gpu_host()  # its engine and its worker, nothing else

    for gpu in cluster.gpus:
        gpu.configure(token_delay_s=0.05, default_tokens=20)
    users = [client.login() for _ in range(3)]
    jobs = [
        (headers, submit(client.api, headers, prompt=f"scale out {k}")["id"])
        for k in range(30)
        for headers in [users[k % 3]]
    ]
    results = [finished(client.api, headers, job, timeout=90) for headers, job in jobs]

    assert {result["status"] for result in results} == {"completed"}
    assert added.node in {result["worker"] for result in results}
    after = _pids(cluster)
    assert {name: after[name] for name in before} == before  # nobody else restarted
