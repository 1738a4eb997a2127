"""The whole suite in two lanes at once (`make test`):

    python -m tests.lanes [pytest options]

- processes: the tests that run the system as processes (tests/pipeline, cluster, ops,
  faults). They spend most of their time waiting on workers, brokers and restarts, and some
  of them time what they watch, so they run at full priority and print as they go.
- in-process: every other test (the app in this process, SQL, the schema fuzz). CPU-bound
  and timing-free; it runs at `nice` 10 in the CPU the first lane leaves idle, with its own
  test database (`<database>_inproc_test`) and Redis database (IN_PROCESS_REDIS_DB, 13),
  and its output is printed when both are done.

Either lane failing fails the run. A chosen file or folder is run with plain `pytest`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from config.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TESTS = ("tests/pipeline", "tests/cluster", "tests/ops", "tests/faults")
IN_PROCESS_NICE = 10
IN_PROCESS_REDIS_DB = os.environ.get("IN_PROCESS_REDIS_DB", "13")


def _in_process_env() -> dict[str, str]:
    url = make_url(get_settings().database_url)
    database_url = url.set(database=f"{url.database}_inproc")
    return {
        **os.environ,
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "TEST_REDIS_DB": IN_PROCESS_REDIS_DB,
    }


def main(options: list[str]) -> int:
    if os.environ.get("TEST_REDIS_DB", "15") == IN_PROCESS_REDIS_DB:
        sys.exit(
            f"TEST_REDIS_DB and IN_PROCESS_REDIS_DB are both {IN_PROCESS_REDIS_DB}:"
            " the lanes would flush each other's Redis database"
        )
    pytest = [sys.executable, "-m", "pytest", *options]
    ignored = [f"--ignore={folder}" for folder in PROCESS_TESTS]
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("w+", prefix="in-process-lane-", suffix=".log") as log:
        in_process = subprocess.Popen(
            ["nice", "-n", str(IN_PROCESS_NICE), *pytest, "tests", *ignored],
            cwd=ROOT,
            env=_in_process_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            processes = subprocess.run([*pytest, *PROCESS_TESTS], cwd=ROOT, check=False)
            in_process_code = in_process.wait()
        finally:
            if in_process.poll() is None:
                in_process.terminate()
                in_process.wait()
        log.seek(0)
        print("\n======== the in-process lane ========", flush=True)
        sys.stdout.write(log.read())
    print(
        f"\nlanes: processes exit {processes.returncode}, in-process exit {in_process_code},"
        f" {time.monotonic() - started:.0f} s in all",
        flush=True,
    )
    return 0 if processes.returncode == 0 and in_process_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
