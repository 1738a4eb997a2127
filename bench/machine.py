"""The machine a report ran on, and how much of it other work took meanwhile.

Every figure in the report shares the cores with everything else the machine runs, so the
report says so per part: CPU seconds used by processes that are neither this benchmark's
(itself and its descendants) nor the shared services it uses (PostgreSQL, Redis).
"""

from __future__ import annotations

import os
import platform
import threading
from collections import defaultdict
from pathlib import Path

SHARED = ("postgres", "redis-server")
TICK = os.sysconf("SC_CLK_TCK")


def describe() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        memory_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return (
        f"{os.cpu_count()} cores ({model}), {memory_kb / 1024 / 1024:.0f} GiB,"
        f" Python {platform.python_version()}"
    )


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return loadavg.read().split()[0]


def processes() -> dict[int, tuple[int, str, float, int]]:
    """pid -> (parent pid, command, CPU seconds so far, start time in ticks)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # gone meanwhile
        name, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
        found[int(entry.name)] = (
            int(rest[1]),
            shorten(cmdline) or name,
            (int(rest[11]) + int(rest[12])) / TICK,
            int(rest[19]),
        )
    return found


def shorten(cmdline: str) -> str:
    program, _, arguments = cmdline.partition(" ")
    return f"{os.path.basename(program)} {arguments}".strip()[:60]


class Neighbours:
    """Samples, every `interval_s`, the CPU that other processes use; `take()` returns what
    accumulated since the last call (core-seconds, wall seconds, the busiest commands)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.lock = threading.Lock()
        self.cpu: dict[str, float] = defaultdict(float)
        self.started = self._now()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _now() -> float:
        return float(os.times().elapsed)

    def _foreign(self, snapshot: dict[int, tuple[int, str, float, int]]) -> set[int]:
        mine = {os.getpid()}
        changed = True
        while changed:  # descendants, whatever order /proc lists them in
            before = len(mine)
            mine |= {pid for pid, (parent, *_) in snapshot.items() if parent in mine}
            changed = len(mine) != before
        return {
            pid
            for pid, (_, command, *_) in snapshot.items()
            if pid not in mine and not command.startswith(SHARED)
        }

    def _run(self) -> None:
        last = processes()
        while not self.stopping.wait(self.interval_s):
            now = processes()
            used: dict[str, float] = defaultdict(float)
            for pid in self._foreign(now):
                _, command, seconds, born = now[pid]
                previous = last.get(pid)
                # A pid seen before (same start time) counts what it used since; a new one all.
                gained = seconds - previous[2] if previous and previous[3] == born else seconds
                if gained > 0:
                    used[command.split(" (")[0]] += gained
            with self.lock:
                for command, seconds in used.items():
                    self.cpu[command] += seconds
            last = now

    def take(self) -> dict[str, object]:
        with self.lock:
            cpu, self.cpu = self.cpu, defaultdict(float)
        now = self._now()
        wall, self.started = now - self.started, now
        return {
            "core_seconds": round(sum(cpu.values()), 1),
            "wall_seconds": round(wall, 1),
            "busiest": [
                f"{command} ({seconds:.0f} s)"
                for command, seconds in sorted(cpu.items(), key=lambda item: -item[1])[:3]
            ],
        }

    def stop(self) -> None:
        self.stopping.set()
