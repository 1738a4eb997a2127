"""What a run leaves behind: nothing, even when it fails half-way; and what a run that was
killed left behind does not stop the next one."""

from __future__ import annotations

import subprocess

import pytest

from tests.cluster import netns
from tests.cluster.harness import Cluster, wait_for
from tests.cluster.hosts import Host


class BrokenBroker:
    name = "broken"

    def start(self, data: Host) -> str:
        raise RuntimeError("the broker would not start")

    def close(self) -> None:
        pass


def test_a_cluster_that_fails_to_start_leaves_no_namespace_process_or_folder() -> None:
    cluster = Cluster(broker=BrokenBroker())
    with pytest.raises(RuntimeError, match="would not start"), cluster:
        pass
    assert not [name for name in netns.ours() if name.startswith(cluster.prefix)]
    assert not cluster.folder.exists()
    assert cluster.data_services is not None
    assert not cluster.data_services.postgres.running  # its PostgreSQL was started, then ended


def test_namespaces_of_a_dead_run_are_swept_with_what_ran_in_them() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs: the "crashed" run's
    stale = f"{netns.run_prefix(gone.pid)}gpu1"
    netns.create(stale)
    orphan = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "600"])
    try:
        wait_for(lambda: netns.pids_in(stale), 10, "the orphan in its namespace")
        removed = netns.sweep_stale()  # what every new Cluster does first
        assert stale in removed
        assert stale not in netns.ours()
        assert orphan.wait(timeout=10) != 0  # killed with its namespace
    finally:
        if orphan.poll() is None:
            orphan.kill()
        netns.delete(stale)
