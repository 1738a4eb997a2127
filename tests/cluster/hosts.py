"""Hosts of the cluster: a network namespace each, with an address on the wire, a folder for
its logs, and the processes it runs. The wire is a bridge in a namespace of its own; a host's
cable is a veth pair, one end (`eth0`) in the host, the other a port of the bridge named
after the host, which is what `cut` takes down: the host sees its carrier go, as when a
switch port or a cable dies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.cluster import netns


class Wire:
    def __init__(self, prefix: str) -> None:
        self.namespace = f"{prefix}wire"
        netns.create(self.namespace)
        netns.ip("-n", self.namespace, "link", "add", "br0", "type", "bridge")
        netns.ip("-n", self.namespace, "link", "set", "br0", "up")

    def plug(self, host: Host) -> None:
        netns.ip(
            *("-n", self.namespace, "link", "add", host.name, "type", "veth"),
            *("peer", "eth0", "netns", host.namespace),
        )
        netns.ip("-n", self.namespace, "link", "set", host.name, "master", "br0", "up")
        netns.ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        netns.ip("-n", host.namespace, "link", "set", "eth0", "up")

    def cut(self, host: Host) -> None:
        netns.ip("-n", self.namespace, "link", "set", host.name, "down")

    def mend(self, host: Host) -> None:
        netns.ip("-n", self.namespace, "link", "set", host.name, "up")


class Host:
    """One machine: `spawn` starts a process there (in its namespace, with the host's own
    host name), and `close` ends them all."""

    def __init__(self, name: str, number: int, prefix: str, folder: Path) -> None:
        self.name = name
        self.namespace = f"{prefix}{name}"
        self.address = f"{netns.SUBNET}.{number}"
        self.folder = folder / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        netns.create(self.namespace)

    def inside(self) -> contextlib.AbstractContextManager[None]:
        """Sockets opened (and processes started) in this block belong to this host."""
        return netns.inside(self.namespace)

    def log_path(self, label: str) -> Path:
        return self.folder / f"{label}.log"

    def log(self, label: str) -> str:
        try:
            return self.log_path(label).read_text(errors="replace")
        except OSError:
            return ""

    def spawn(
        self, label: str, argv: list[str], env: dict[str, str], **popen: Any
    ) -> subprocess.Popen[bytes]:
        hostname = self.name
        with self.inside(), self.log_path(label).open("ab") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the test, not the fleet
                preexec_fn=lambda: netns.own_hostname(hostname),
                **popen,
            )
        self.processes[label] = process
        return process

    def signal(self, label: str, sig: int) -> None:
        process = self.processes[label]
        if process.poll() is None:
            os.killpg(process.pid, sig)

    def stop(self, label: str, timeout: float = 20.0) -> None:
        process = self.processes.pop(label, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def kill(self, label: str) -> None:
        """SIGKILL to the process and its children (gunicorn's workers too)."""
        process = self.processes.pop(label)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def unreachable(self, address: str) -> contextlib.AbstractContextManager[None]:
        return _route(self.namespace, address)

    def close(self) -> None:
        for label in list(self.processes):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(label, timeout=10)
        netns.delete(self.namespace)  # and anything that still ran there


@contextlib.contextmanager
def _route(namespace: str, address: str) -> Iterator[None]:
    """While the block runs, this host's packets to `address` are dropped (a blackhole
    route): connections neither connect nor get refused, as behind a dead router."""
    netns.ip("-n", namespace, "route", "add", "blackhole", f"{address}/32")
    try:
        yield
    finally:
        netns.ip("-n", namespace, "route", "del", "blackhole", f"{address}/32")
