"""Linux network namespaces as hosts, and a wire (a bridge in a namespace of its own) that
links them: the kernel's own stack between every pair of hosts, no loopback across them.

Every name this run makes starts with `omxc<pid>-`, the pid of the process that made it, so
a run that crashed (kill -9, a lost CI runner) leaves names that the next run recognises as
stale and removes (`sweep_stale`), processes inside them first. Two runs side by side never
share a name, and each has a wire of its own, so both can use the same addresses.

A thread enters a namespace with `inside(name)`: sockets it opens there, and processes it
starts there, stay in that namespace for their whole life (the kernel keeps the namespace of
each thread, and a child inherits the one of the thread that forked it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
PREFIX = "omxc"
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
SUBNET = "10.77.0"  # every run has a wire of its own: the same addresses never collide

_libc = ctypes.CDLL(None, use_errno=True)


def run_prefix(pid: int | None = None) -> str:
    return f"{PREFIX}{pid or os.getpid()}-"


def ip(*args: str) -> str:
    """`ip ...`; raises with iproute2's message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _setns(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block in `namespace` (this thread only), then come back to where it was."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(NETNS_DIR / namespace)
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:  # never leave a thread elsewhere
                raise OSError(ctypes.get_errno(), "setns back to the original namespace")
    finally:
        os.close(home)


def own_hostname(hostname: str) -> None:
    """For `preexec_fn`: the child gets a UTS namespace of its own with this host name, so
    `socket.gethostname()` (a worker's node host, Celery's node name) tells hosts apart."""
    if _libc.unshare(CLONE_NEWUTS) != 0 or _libc.sethostname(hostname.encode(), len(hostname)):
        raise OSError(ctypes.get_errno(), "unshare/sethostname")


def create(namespace: str) -> None:
    ip("netns", "add", namespace)
    ip("-n", namespace, "link", "set", "lo", "up")


def pids_in(namespace: str) -> list[int]:
    try:
        return [int(pid) for pid in ip("netns", "pids", namespace).split()]
    except RuntimeError:  # already gone
        return []


def delete(namespace: str) -> None:
    """Kill whatever still runs in it (SIGTERM, then SIGKILL), then delete it."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = pids_in(namespace)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = pids_in(namespace)
        if not pids:
            break
    with contextlib.suppress(RuntimeError):
        ip("netns", "delete", namespace)


def ours() -> list[str]:
    listed = ip("netns", "list").splitlines()
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove the namespaces of runs whose process is gone; the names removed."""
    removed = []
    for namespace in ours():
        owner = namespace[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            delete(namespace)
            removed.append(namespace)
    return removed
