"""Every benchmark in one command, then the report:

    .venv/bin/python -m bench            # the full run (about 20 minutes on 2 cores)
    .venv/bin/python -m bench --quick    # a smoke run (about 5 minutes), into bench/results/quick/

Each part starts its own scratch stack (database `<db>_bench`, Redis database 14) and stops
it: the pipeline, the relay, the front doors, the real model, then the soak. A part that
fails is reported as failed and the others still run (the exit status says so). Results:
report.md, report.png and report.json in --out (default bench/results/, or
bench/results/quick/ for --quick). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import front_doors, pipeline, real_model, relay, report, soak
from bench.machine import Neighbours, describe, load_average
from bench.stack import RESULTS, ROOT, progress

PARTS = ("pipeline", "relay", "front_doors", "real_model", "soak")


def plan(quick: bool, soak_minutes: float) -> dict[str, Callable[[], dict[str, Any]]]:
    """What each part runs with: the full run uses each benchmark's own defaults."""
    if quick:
        return {
            "pipeline": lambda: pipeline.measure(seconds=3, connections=64, streams=20, jobs=40),
            "relay": lambda: relay.measure(idle=200, streams=20, rate=100, seconds=5),
            "front_doors": lambda: front_doors.measure(concurrency=8, seconds=4, rounds=1),
            "real_model": lambda: real_model.measure(runs=3),
            "soak": lambda: soak.measure(minutes=soak_minutes),
        }
    return {
        "pipeline": lambda: pipeline.measure(seconds=15, connections=64, streams=20, jobs=200),
        "relay": lambda: relay.measure(idle=900, streams=100, rate=100, seconds=20),
        "front_doors": lambda: front_doors.measure(concurrency=8, seconds=20, rounds=2),
        "real_model": lambda: real_model.measure(runs=10),
        "soak": lambda: soak.measure(minutes=soak_minutes),
    }


def git(*argv: str) -> str:
    try:
        return subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:  # no git (the compose image)
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short durations: a smoke run")
    parser.add_argument("--soak-minutes", type=float, default=None, help="default 10 (quick: 1)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the report goes")
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    soak_minutes = args.soak_minutes or (1.0 if args.quick else 10.0)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    runs = plan(args.quick, soak_minutes)

    started = time.time()
    result: dict[str, Any] = {
        "meta": {
            "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
            "quick": args.quick,
            "machine": describe(),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--porcelain", "--untracked-files=no") not in ("", "unknown"),
            "started": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
            "load": {},
            "neighbours": {},
        },
        "failed": {},
    }
    neighbours = Neighbours()
    for part in PARTS:
        if part not in parts:
            continue
        neighbours.take()  # what other processes use from here on counts against this part
        before = load_average()
        progress(f"=== {part} (load average {before})")
        begun = time.monotonic()
        try:
            result[part] = runs[part]()
        except Exception as error:  # the other parts still run; the report says this one failed
            traceback.print_exc()
            result["failed"][part] = repr(error)
        result["meta"]["load"][part] = f"{before} -> {load_average()}"
        result["meta"]["neighbours"][part] = neighbours.take()
        progress(f"=== {part} done in {(time.monotonic() - begun) / 60:.1f} min")
    neighbours.stop()
    result["meta"]["minutes"] = (time.time() - started) / 60
    path = report.write(result, out)
    progress(f"report: {path} (and report.png, report.json beside it)")
    print(path.read_text())
    if result["failed"]:
        sys.exit(f"failed parts: {', '.join(result['failed'])}")


if __name__ == "__main__":
    main()
