"""mutmut 2 hooks for the mutation run (docs/mutation-testing.md; tests/mutation/run.sh
copies this file into the snapshot it mutates, where mutmut imports it).

Before each mutant, `pre_mutation` skips it unless it lies in a function chosen below, and
runs only the fast tests that cover its module (a fresh pytest process per mutant costs
seconds; the whole suite would cost minutes)."""

from __future__ import annotations

import ast
import os
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    tests: tuple[str, ...]  # the most telling first: pytest stops at the first failure
    only: frozenset[str] | None = None  # top-level functions or classes; None: the whole file


TARGETS: dict[str, Target] = {
    "db/inference.py": Target(
        (
            "tests/db/test_inference_sql.py",
            "tests/db/test_request_lifecycle.py",
            "tests/db/test_fencing.py",
        ),
        only=frozenset(
            {
                # The admission's, the fair claim's and the finish's rules are SQL in
                # migrations 0008, 0009 and 0012 (admit(), fair_claim(), finish_job()), which
                # mutmut does not mutate.
                "insert_if_servable",
                "claim",
                "_claim_statement",
                "ours",
                "renew_leases",
                "finish",
                "_usage_counts",
                "_finish_call",
                "cancel",
            }
        ),
    ),
    "db/recovery.py": Target(
        (
            "tests/db/test_inference_sql.py",
            "tests/db/test_request_lifecycle.py",
            "tests/db/test_fencing.py",
        ),
        only=frozenset(
            {"_requeued_unless_ended", "hand_back", "requeue_expired_leases", "undispatched"}
        ),
    ),
    # The rule "a node serves this model" (the SQL function model_served() of migration
    # 0009, which admit() calls too).
    "db/fleet.py": Target(
        ("tests/db/test_inference_sql.py", "tests/web/test_accept.py"),
        only=frozenset({"served", "availability"}),
    ),
    "web/security/policy.py": Target(
        (
            "tests/web/test_policy.py",
            "tests/web/identity/test_api_keys_and_profile.py",
        )
    ),
    "web/security/principal.py": Target(
        (
            "tests/web/test_principal.py",
            "tests/web/identity/test_api_keys_and_profile.py",
            "tests/web/identity/test_tokens_and_sessions.py",
        )
    ),
    "web/security/principal_cache.py": Target(
        (
            "tests/web/test_principal_cache_listener.py",
            "tests/web/test_principal_cache.py",
            "tests/web/test_principal.py",
        )
    ),
    "web/realtime/cursor.py": Target(("tests/web/test_event_cursor.py",)),
    "web/inference/service.py": Target(
        ("tests/web/test_accept.py", "tests/web/test_inference_api.py"),
        only=frozenset(
            {
                "<module>",
                "idempotency_key",
                "_request_hash",
                "accept",
                "_not_inserted",
                "_announce_and_publish",
            }
        ),
    ),
}

# mutmut 2 counts a mutant killed only when its test command exits 1: pytest's 2 (a module
# that no longer imports, a syntax error) would count as survived, so any failure exits 1.
# The plugins are ones these tests do not use, and that cost seconds of start-up per mutant.
PYTEST = (
    "-c 'import sys, pytest; sys.exit(pytest.main(sys.argv[1:]) and 1)'"
    " -x -q -p no:cacheprovider -p no:hypothesispytest -p no:schemathesis -p no:anyio -p no:faker"
)


def test_command(paths: list[str]) -> str:
    python = os.environ.get("MUTATION_PYTHON", "python")
    tests = [test for path in paths for test in TARGETS[path].tests]
    return f"{shlex.quote(python)} {PYTEST} " + " ".join(dict.fromkeys(tests))


@cache
def _owners(path: str) -> dict[int, str]:
    """Line number -> the top-level function or class it belongs to."""
    owners: dict[int, str] = {}
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            for line in range(start, (node.end_lineno or node.lineno) + 1):
                owners[line] = node.name
    return owners


def owner(path: str, line: int) -> str:
    return _owners(path).get(line, "<module>")


def pre_mutation(context: Any) -> None:
    path = Path(context.filename).as_posix()
    target = TARGETS.get(path)
    line = context.current_line_index + 1
    if target is None or (target.only is not None and owner(path, line) not in target.only):
        context.skip = True
        return
    context.config.test_command = test_command([path])
