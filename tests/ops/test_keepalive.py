"""ops/keepalive.py, which `make run` puts around each worker: a command that fails starts
again after a backoff, one that ends cleanly stays stopped, and SIGTERM (what honcho sends
to the whole process group on Ctrl-C) stops it and the command at once; under honcho, a
failing worker no longer stops the stack."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from ops import supervisor
from tests.conftest import ROOT
from tests.pipeline.conftest import wait_for
from workers.__main__ import parse as parse_worker_args

# A command that notes each start and its stop, fails (status 3) while it has started fewer
# than FAILURES times, then runs until SIGTERM and ends cleanly.
COMMAND = """
import os, signal, sys, time
starts = sys.argv[1]
with open(starts, "a") as out:
    out.write(f"{os.getpid()}\\n")
runs = len(open(starts).read().split())
if runs <= int(sys.argv[2]):
    sys.exit(3)
def stop(*_):
    # honcho's SIGTERM reaches the whole group and keepalive passes its own on: note one stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(starts + ".stopped", "a").write(f"{os.getpid()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("serving", flush=True)
while True:
    time.sleep(0.1)
"""


class Run:
    def __init__(self, folder: Path, failures: int, *options: str) -> None:
        self.starts = folder / "starts"
        self.log_path = folder / "keepalive.log"
        command = [sys.executable, "-c", COMMAND, str(self.starts), str(failures)]
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ops.keepalive", "--name", "job", *options, "--", *command],
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # as honcho starts it: a process group of its own
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        return [int(pid) for pid in self.starts.read_text().split()] if self.starts.exists() else []

    def stopped(self) -> list[int]:
        path = Path(f"{self.starts}.stopped")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def terminate_group(self) -> int:
        """What honcho does on Ctrl-C: SIGTERM to the process group."""
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=10)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait(timeout=10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failing_command_starts_again_with_a_growing_backoff_until_it_stays_up(
    tmp_path: Path, runs: list[Run]
) -> None:
    run = Run(tmp_path, 2, "--backoff-s", "0.2")
    runs.append(run)
    wait_for(lambda: "serving" in run.log(), timeout=20)

    log = run.log()
    assert "job: exited with status 3 after" in log
    assert "restarting in 0.2 s (restart 1)" in log
    assert "restarting in 0.4 s (restart 2)" in log  # doubled: it failed again at once
    assert len(run.pids()) == 3
    assert run.process.poll() is None

    started = time.monotonic()
    assert run.terminate_group() == 0  # the command's own status: it stopped cleanly
    assert time.monotonic() - started < 5
    serving = run.pids()[-1]
    assert run.stopped() == [serving]
    assert not alive(serving)
    assert "restart 3" not in run.log()


def test_sigterm_to_keepalive_alone_reaches_the_command(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, 0)
    runs.append(run)
    wait_for(lambda: "serving" in run.log(), timeout=20)

    run.process.send_signal(signal.SIGTERM)  # `kill <pid>`, not the whole group

    assert run.process.wait(timeout=10) == 0
    assert run.stopped() == run.pids()


def test_sigterm_during_the_backoff_ends_it_without_another_start(
    tmp_path: Path, runs: list[Run]
) -> None:
    run = Run(tmp_path, 100, "--backoff-s", "30")
    runs.append(run)
    wait_for(lambda: "restarting in 30 s (restart 1)" in run.log(), timeout=20)

    started = time.monotonic()
    assert run.terminate_group() == 0
    assert time.monotonic() - started < 5
    assert len(run.pids()) == 1


def test_a_command_that_ends_cleanly_is_not_started_again(tmp_path: Path, runs: list[Run]) -> None:
    """A decommissioned node's worker exits 0: it stays stopped, and keepalive stays up so
    that honcho keeps the rest of the stack running."""
    run = Run(tmp_path, 0)
    runs.append(run)
    wait_for(lambda: "serving" in run.log(), timeout=20)
    os.kill(run.pids()[0], signal.SIGTERM)  # the command alone stops, cleanly

    wait_for(lambda: "exited with status 0: not restarting it" in run.log(), timeout=10)
    time.sleep(0.5)
    assert run.process.poll() is None
    assert len(run.pids()) == 1
    assert run.terminate_group() == 0


def test_under_honcho_a_failing_process_no_longer_stops_the_stack(tmp_path: Path) -> None:
    """Honcho stops every process as soon as one ends; a failing command under keepalive
    never ends, and Ctrl-C still stops everything."""
    starts = tmp_path / "starts"
    keepalive = [sys.executable, "-m", "ops.keepalive", "--name", "worker.cpu"]
    failing = shlex.join(
        [*keepalive, "--backoff-s", "0.2", "--", sys.executable, "-c", COMMAND, str(starts), "3"]
    )
    script = (
        "import sys\n"
        "from honcho.manager import Manager\n"
        "manager = Manager()\n"
        f"manager.add_process('worker.cpu', {failing!r})\n"
        "manager.add_process('web', 'sleep 60')\n"
        "manager.loop()\n"
        "sys.exit(manager.returncode)\n"
    )
    log_path = tmp_path / "honcho.log"
    with log_path.open("wb") as log_file:
        honcho = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "serving" in log_path.read_text(), timeout=30)
        log = log_path.read_text()
        assert "restart 3" in log
        assert "stopped" not in log  # honcho's "<name> stopped (rc=…)": nothing ended
        assert honcho.poll() is None

        honcho.send_signal(signal.SIGINT)  # Ctrl-C
        honcho.wait(timeout=15)
        log = log_path.read_text()
        assert "worker.cpu stopped" in log
        assert "web stopped" in log
        assert "SIGKILL" not in log
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(timeout=10)


def test_make_run_starts_each_worker_under_keepalive() -> None:
    commands: dict[str, str] = {}

    class Recorder:
        def add_process(self, name: str, command: str, env: dict[str, str]) -> None:
            commands[name] = command

    engine = supervisor.EngineChoice("openai", "http://127.0.0.1:11480", embedded=True)
    supervisor._add_workers(Recorder(), Settings(_env_file=None), engine, {})  # type: ignore[arg-type,call-arg]

    [(name, command)] = commands.items()
    assert name == "worker.cpu"
    argv = shlex.split(command)
    assert argv[:6] == [sys.executable, "-m", "ops.keepalive", "--name", "worker.cpu", "--"]
    worker = argv[6:]
    assert worker[:4] == [sys.executable, "-m", "workers", "run"]
    assert parse_worker_args(worker[3:]).engine_url == "http://127.0.0.1:11480"
