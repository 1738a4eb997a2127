"""What three pieces of per-request plumbing cost, in CPU, one call at a time:

    .venv/bin/python -m bench.per_call [--calls 3000] [--rounds 7] [--out DIR]

- `access line`: the web's access log line (web/request_context.py) through the JSON
  formatter as `configure_logging` builds it, into memory; beside it, the same line's
  masking with the secret patterns run on every string, as before mask_text looked for
  their words first (config/logging.py).
- `flask-limiter's hooks`: its before_request check, its headers and its context reset,
  as they ran on every request before they were scoped to the routes it limits
  (web/security/ratelimit.py): what a request elsewhere no longer pays.
- `one statement`: `SELECT 1` as a unit of work of one statement in autocommit, through an
  ORM session (`Database.one_statement`) and through a Core connection
  (`Database.one_call`, what admit, the fair claim, finish and a follower's lookup use).
  Needs the PostgreSQL server of DATABASE_URL (its `postgres` database; no table is read).

Variants take turns within each round, so a burst of the host falls on all of them; the
median of the rounds is reported, in µs of this thread's CPU per call. Results:
per-call.md and .json in --out (default bench/results/). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Response
from sqlalchemy import make_url, text

import config.logging as log_config
from bench.machine import describe, load_average
from bench.stack import RESULTS, progress
from config.settings import build_settings
from db.session import Database
from web import create_app

ACCESS_PATH = "/api/v1/inference/generate"


def access_line() -> dict[str, Callable[[], None]]:
    """The access line as the web logs it, and its masking with every pattern run."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_config.build_formatter("json"))
    log = logging.getLogger("bench.per_call.access")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    log_config.request_id_var.set("0123456789abcdef0123456789abcdef")
    extra = {
        "method": "POST",
        "path": ACCESS_PATH,
        "route": ACCESS_PATH,
        "status": 202,
        "duration_ms": 3.21,
        "remote_addr": "127.0.0.1",
    }

    def line() -> None:
        log.info("%s %s %s", "POST", ACCESS_PATH, 202, extra=extra)
        stream.seek(0)
        stream.truncate()

    texts = [f"POST {ACCESS_PATH} 202", "POST", ACCESS_PATH, ACCESS_PATH, "127.0.0.1"]

    def mask_with_words_first() -> None:
        for value in texts:
            log_config.mask_text(value)

    def mask_with_every_pattern() -> None:
        for value in texts:
            for pattern, replacement in log_config._SECRET_TEXT_PATTERNS:
                value = pattern.sub(replacement, value)

    return {
        "access line, formatted": line,
        "its five strings masked, words looked for first": mask_with_words_first,
        "its five strings masked, every pattern run": mask_with_every_pattern,
    }


def limiter_hooks(overrides: dict[str, Any]) -> tuple[Callable[[], None], Any]:
    """flask-limiter's three hooks on a route it does not limit, inside a request."""
    app = create_app(overrides)
    registries = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    before, after, teardown = (registry["auth"] for registry in registries)
    response = Response("{}")
    context = app.test_request_context(ACCESS_PATH, method="POST", json={})

    def hooks() -> None:
        for hook in before:
            hook()
        for hook in after:
            hook(response)
        for hook in teardown:
            hook(None)

    return hooks, context


def one_statement(database: Database) -> dict[str, Callable[[], None]]:
    select_one = text("SELECT 1")

    def via_session() -> None:
        with database.one_statement() as session:
            session.connection().execute(select_one).scalar()

    def via_core() -> None:
        with database.one_call() as connection:
            connection.execute(select_one).scalar()

    return {
        "one statement, ORM session (one_statement)": via_session,
        "one statement, Core connection (one_call)": via_core,
    }


def measure(variants: dict[str, Callable[[], None]], calls: int, rounds: int) -> dict[str, Any]:
    for call in variants.values():  # warm: imports, plans, pools
        for _ in range(min(calls, 300)):
            call()
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            started = time.thread_time()
            for _ in range(calls):
                call()
            runs[name].append((time.thread_time() - started) / calls * 1e6)
    return {
        name: {"median_us": statistics.median(v), "runs_us": [round(x, 1) for x in v]}
        for name, v in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    # SELECT 1 needs no table: the server's own database, which every cluster has.
    server = make_url(build_settings({}).database_url).set(database="postgres")
    overrides = {"log_level": "WARNING", "database_url": server.render_as_string(False)}
    settings = build_settings(overrides)
    # The record factory that stamps the request id on every record, as in every process.
    log_config.configure_logging(settings.log_level, settings.log_format)
    load_before = load_average()
    results: dict[str, Any] = {}
    progress("per_call: the access line")
    results.update(measure(access_line(), args.calls, args.rounds))
    progress("per_call: flask-limiter's hooks")
    hooks, context = limiter_hooks(overrides)
    with context:
        results.update(
            measure({"flask-limiter's hooks, per request": hooks}, args.calls, args.rounds)
        )
    progress("per_call: one statement")
    database = Database.from_settings(settings, pool_size=1)
    try:
        results.update(measure(one_statement(database), args.calls // 3, args.rounds))
    finally:
        database.dispose()

    meta = {
        "command": f"python -m bench.per_call --calls {args.calls} --rounds {args.rounds}",
        "machine": describe(),
        "load_1m": f"{load_before} -> {load_average()}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "per-call.json").write_text(json.dumps({"meta": meta, "results": results}))
    (args.out / "per-call.md").write_text(render(meta, results))
    print(render(meta, results))


def render(meta: dict[str, Any], results: dict[str, Any]) -> str:
    lines = [
        "# Per-call costs (`python -m bench.per_call`)",
        "",
        f"`{meta['command']}`; {meta['machine']}; load average (1 min) {meta['load_1m']}.",
        "CPU of this thread per call, median of the rounds (each round's in brackets).",
        "",
        "| call | µs per call | rounds |",
        "|---|---:|---|",
    ]
    for name, result in results.items():
        runs = ", ".join(f"{x:.0f}" for x in result["runs_us"])
        lines.append(f"| {name} | {result['median_us']:.1f} | {runs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
