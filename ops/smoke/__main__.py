"""`python -m ops.smoke --base-url URL --admin-email EMAIL --admin-password PW [--model NAME]
[--timeout 60] [--metrics-token TOKEN] [--ca-bundle PEM] [--json]`

Exit codes: 0 every scenario passed and everything made was removed; 1 a scenario failed or
was skipped; 2 bad arguments; 3 cleanup could not remove something (it says what); 130
interrupted (cleanup still ran).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from typing import Any

from ops.smoke.context import Cleanup, Context, Options
from ops.smoke.runner import FAIL, PASS, SKIP, Outcome, Result, run_scenarios
from ops.smoke.scenarios import SCENARIOS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LEFT_BEHIND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.smoke",
        description="Smoke-test an OllamaMax deployment through its public API.",
    )
    parser.add_argument("--base-url", help="e.g. http://127.0.0.1:11400")
    parser.add_argument("--admin-email", default=os.environ.get("ADMIN_EMAIL"))
    parser.add_argument(
        "--admin-password",
        default=os.environ.get("ADMIN_PASSWORD"),
        help="visible in the process list: prefer ADMIN_PASSWORD or --admin-password-stdin",
    )
    parser.add_argument("--admin-password-stdin", action="store_true")
    parser.add_argument(
        "--model", help="default: the first available model of the fleet that generates"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per call and per wait (60)"
    )
    parser.add_argument(
        "--metrics-token",
        default=os.environ.get("METRICS_TOKEN"),
        help="bearer token GET /metrics wants, if the deployment sets METRICS_TOKEN",
    )
    parser.add_argument(
        "--ca-bundle", help="PEM file to trust for an https:// deployment (default: the system's)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        return args
    if args.admin_password_stdin:
        args.admin_password = sys.stdin.readline().rstrip("\r\n")
    missing = [
        flag
        for flag, value in (
            ("--base-url", args.base_url),
            ("--admin-email", args.admin_email),
            ("--admin-password", args.admin_password),
        )
        if not value
    ]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    if not args.base_url.startswith(("http://", "https://")):
        parser.error("--base-url must start with http:// or https://")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def exit_code(outcome: Outcome, cleanup: Cleanup) -> int:
    if cleanup.problems:
        return EXIT_LEFT_BEHIND
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome.all_passed else EXIT_FAILED


def summary_line(outcome: Outcome, seconds: float) -> str:
    counts = f"{outcome.count(PASS)} passed, {outcome.count(FAIL)} failed, {outcome.count(SKIP)}"
    interrupted = " (interrupted)" if outcome.interrupted else ""
    return f"SUMMARY: {counts} skipped of {len(outcome.results)} in {seconds:.1f}s{interrupted}"


def document(
    context: Context, outcome: Outcome, cleanup: Cleanup, seconds: float, code: int
) -> dict[str, Any]:
    return {
        "base_url": context.options.base_url,
        "run_id": context.run_id,
        "model": context.used_model,
        "results": [result.as_dict() for result in outcome.results],
        "cleanup": {"done": cleanup.done, "problems": cleanup.problems},
        "summary": {
            "total": len(outcome.results),
            "passed": outcome.count(PASS),
            "failed": outcome.count(FAIL),
            "skipped": outcome.count(SKIP),
            "interrupted": outcome.interrupted,
            "seconds": round(seconds, 3),
            "calls": context.api.calls,
            "rate_limited": context.api.rate_limited,
        },
        "exit_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:<20} {scenario.summary}")
        return EXIT_OK
    options = Options(
        base_url=args.base_url.rstrip("/"),
        admin_email=args.admin_email,
        admin_password=args.admin_password,
        model=args.model,
        timeout_s=args.timeout,
        metrics_token=args.metrics_token,
        ca_bundle=args.ca_bundle,
    )
    context = Context(options, run_id=secrets.token_hex(4))
    width = max(len(scenario.name) for scenario in SCENARIOS)

    def report(result: Result) -> None:
        if not args.json:
            print(result.line(width), flush=True)

    if not args.json:
        print(f"OllamaMax smoke test of {options.base_url} (run {context.run_id})", flush=True)
    started = time.monotonic()
    outcome = Outcome()
    try:
        outcome = run_scenarios(SCENARIOS, context, report)
    finally:
        cleanup = context.cleanup()  # whatever happened above, including an interrupt
        context.api.close()
    seconds = time.monotonic() - started
    code = exit_code(outcome, cleanup)
    if args.json:
        json.dump(document(context, outcome, cleanup, seconds, code), sys.stdout, indent=2)
        print()
    else:
        for line in cleanup.done:
            print(f"cleanup: {line}")
        for line in cleanup.problems:
            print(f"CLEANUP FAILED: {line}")
        if context.used_model:
            print(f"model: {context.used_model}")
        print(summary_line(outcome, seconds))
    return code


if __name__ == "__main__":
    sys.exit(main())
