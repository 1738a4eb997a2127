"""Runs one command and starts it again when it fails:

    python -m ops.keepalive --name worker.cpu -- python -m workers run ...

`make run` runs each worker under it (ops/supervisor.py), because honcho stops every process
of the stack as soon as one of them ends: a worker that died (a broker that broke its
consumer, an engine that crashed it) would otherwise take the whole stack down with it, and
nothing would start it again.

- The command ends with a non-zero status or by a signal: one line says so, and it starts
  again after a backoff that doubles on each quick failure (`--backoff-s`, at most
  `--max-backoff-s`) and starts over once the command has run `--healthy-after-s`.
- The command ends with status 0 (it was asked to stop: a decommissioned node, a remote
  shutdown): it stays stopped, and this process waits for SIGTERM, so the rest of the stack
  keeps running.
- SIGTERM or SIGINT: passed on to the command (honcho signals the whole process group, so
  the command may get it twice, which a Celery worker or gunicorn takes as one); this
  process then waits for the command and ends with its status, and starts nothing more.
  While it waits out a backoff, it ends at once.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def say(name: str, message: str) -> None:
    print(f"[keepalive] {name}: {message}", flush=True)


def describe(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


class Keepalive:
    def __init__(
        self,
        name: str,
        command: Sequence[str],
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping.set()
        if self.child is not None:
            self.child.send_signal(signum)  # a no-op once it has ended

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_signal)

    def run(self) -> int:
        """Runs the command until it ends cleanly or this process is asked to stop; returns
        the status for this process."""
        delay = self.backoff_s
        while True:
            started = time.monotonic()
            status = self._run_once()
            ran_s = time.monotonic() - started
            if self.stopping.is_set():
                return 128 - status if status < 0 else status
            if status == 0:
                say(self.name, "exited with status 0: not restarting it (it was asked to stop)")
                self.stopping.wait()
                return 0
            if ran_s >= self.healthy_after_s:
                delay = self.backoff_s
            self.restarts += 1
            say(
                self.name,
                f"{describe(status)} after {ran_s:.1f} s; "
                f"restarting in {delay:g} s (restart {self.restarts})",
            )
            if self.stopping.wait(delay):
                return 0
            delay = min(delay * 2, self.max_backoff_s)

    def _run_once(self) -> int:
        self.child = subprocess.Popen(self.command)  # noqa: S603  (the operator's command)
        if self.stopping.is_set():  # a signal came between the check and the start
            self.child.send_signal(signal.SIGTERM)
        return self.child.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ops.keepalive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--name", default=None, help="for its lines; default: the command")
    parser.add_argument("--backoff-s", type=float, default=1.0, help="first wait before a restart")
    parser.add_argument("--max-backoff-s", type=float, default=30.0, help="longest wait")
    parser.add_argument(
        "--healthy-after-s",
        type=float,
        default=60.0,
        help="a run this long resets the backoff to --backoff-s",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    keepalive = Keepalive(
        args.name or command[0],
        command,
        backoff_s=args.backoff_s,
        max_backoff_s=args.max_backoff_s,
        healthy_after_s=args.healthy_after_s,
    )
    keepalive.install()
    sys.exit(keepalive.run())


if __name__ == "__main__":
    main()
