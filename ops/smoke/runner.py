"""Scenarios, their outcomes, and the loop that runs them in order.

A scenario is a function of the context that returns a short account of what it saw (its PASS
reason), raises `Failed` when the deployment answered wrongly, or `Skipped` when something it
needs is missing (a login, a model, an earlier scenario). Any other exception is a failure too,
reported by its type and message: a smoke test never crashes on one bad answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ops.smoke.context import Context
from ops.smoke.outcomes import Failed, Skipped

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class Scenario:
    name: str
    area: str
    run: Callable[[Context], str]
    summary: str  # what it checks, for the docs and --list
    needs: tuple[str, ...] = ()  # scenarios that must have passed first


@dataclass
class Result:
    name: str
    area: str
    status: str
    seconds: float
    reason: str

    def line(self, width: int) -> str:
        return f"{self.status}  {self.name:<{width}}  {self.seconds:6.2f}s  {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Outcome:
    results: list[Result] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(1 for result in self.results if result.status == status)

    @property
    def all_passed(self) -> bool:
        return not self.interrupted and all(r.status == PASS for r in self.results)


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def run_one(scenario: Scenario, context: Context, passed: set[str]) -> Result:
    missing = [name for name in scenario.needs if name not in passed]
    if missing:
        return Result(scenario.name, scenario.area, SKIP, 0.0, f"needs {', '.join(missing)}")
    started = time.monotonic()
    try:
        status, reason = PASS, scenario.run(context)
    except Failed as failure:
        status, reason = FAIL, str(failure)
    except Skipped as skipped:
        status, reason = SKIP, str(skipped)
    except Exception as error:  # an unexpected answer must not stop the run
        status, reason = FAIL, f"{type(error).__name__}: {error}"
    seconds = round(time.monotonic() - started, 3)
    return Result(scenario.name, scenario.area, status, seconds, _one_line(reason))


def run_scenarios(
    scenarios: Iterable[Scenario], context: Context, report: Callable[[Result], None]
) -> Outcome:
    """Run each scenario in order; `report` sees each result as it comes."""
    outcome = Outcome()
    passed: set[str] = set()
    try:
        for scenario in scenarios:
            result = run_one(scenario, context, passed)
            if result.status == PASS:
                passed.add(scenario.name)
            outcome.results.append(result)
            report(result)
    except KeyboardInterrupt:
        outcome.interrupted = True
    return outcome
