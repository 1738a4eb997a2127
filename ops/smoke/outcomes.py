"""How a scenario says it did not pass: the deployment answered wrongly (`Failed`), or
something it needs is missing (`Skipped`). Kept apart from the runner, so the API client and
the context can raise them without importing the runner that imports them."""

from __future__ import annotations


class Failed(Exception):
    """The deployment answered, but not as it should."""


class Skipped(Exception):
    """The scenario cannot run: something it needs is missing (say what)."""


def check(condition: object, reason: str) -> None:
    if not condition:
        raise Failed(reason)
