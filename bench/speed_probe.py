"""How fast the host runs Python right now, sampled while a batch runs.

On a shared virtual machine the same work costs a varying amount of CPU time: a busy
neighbour on the same physical core (or a throttled one) makes every instruction slower,
and /proc charges the slower run to our processes as CPU seconds. Here the probe's own work
took 4.0 to 8.8 ms over ten idle seconds with nothing of ours running (a piece five times
as large, 19 to 43 ms), and one build's CPU per job moved by a quarter between back-to-back
runs. Steal time does not show it: the guest is not descheduled, only slowed.

What it assumes: that the stack slows as a dict-and-string loop does. PostgreSQL, Redis and
the kernel's share are scaled by the same factor, and contention from the benchmark's own
load slows the probe too; the adjusted figure compares runs, it is not a measurement.

The probe is a process of its own that times that fixed work (CPU time of its thread,
`time.thread_time`) every PERIOD_S and reports each sample. A batch's mean sample says how
slow the host ran during it; CPU per job divided by it compares across runs, builds and
hours (docs/benchmarks.md, "The speed probe"). The probe costs about 5 % of one core.

    python -m bench.speed_probe        # prints "<epoch seconds> <ms>" per sample
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

PERIOD_S = 0.1
# The work's CPU time when this 2-core host ran quick (its fastest batches, 2026-12-08): the
# unit that "CPU ms per job at reference speed" is expressed in. Any constant would compare
# runs as well; this one keeps the adjusted figures near the quiet host's.
REFERENCE_MS = 5.0


def fixed_work() -> int:
    """A little of what the stack does: dict stores, int-to-str, string concatenation."""
    table: dict[int, str] = {}
    for i in range(40_000):
        table[i % 1000] = str(i) + "x"
    return len(table)


def main() -> None:
    while True:
        started = time.thread_time()
        fixed_work()
        took_ms = (time.thread_time() - started) * 1000
        print(f"{time.time():.3f} {took_ms:.3f}", flush=True)
        time.sleep(PERIOD_S)


class SpeedProbe:
    """The probe process and its samples; `mean_ms(since, until)` for a window."""

    def __init__(self) -> None:
        """Starts the probe process: call `stop()` in a `finally`."""
        self.samples: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.speed_probe"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, name="speed-probe", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            at, took = line.split()
            with self.lock:
                self.samples.append((float(at), float(took)))

    def mean_ms(self, since: float, until: float) -> float | None:
        """The mean sample taken between two `time.time()` readings; None if none was."""
        with self.lock:
            window = [took for at, took in self.samples if since <= at <= until]
        return statistics.fmean(window) if window else None

    def cpu_s(self) -> float:
        """The probe process's own CPU seconds so far (to leave out of a machine's total)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            raw = stat.read()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


if __name__ == "__main__":
    main()
