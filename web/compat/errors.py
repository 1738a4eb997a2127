"""Any error, as the API would answer it, for a front door to reshape into its protocol's
error body (each door's blueprint handler sees every exception first), and the doors' answer
to a request that routing refuses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, request

from web.errors import render_error

# Headers of our answer that mean the same in any protocol.
CARRIED_HEADERS = ("Retry-After", "WWW-Authenticate", "Allow")


@dataclass(frozen=True)
class ErrorFacts:
    status: int
    code: str | None
    message: str
    details: Any
    headers: dict[str, str]

    def carry_headers(self, response: Response) -> Response:
        response.headers.update(self.headers)
        return response


def error_facts(error: Exception) -> ErrorFacts:
    ours = render_error(error)
    body = (ours.get_json(silent=True) or {}).get("error") or {}
    return ErrorFacts(
        status=ours.status_code,
        code=body.get("code"),
        message=str(body.get("message", "error")),
        details=body.get("details"),
        headers={name: ours.headers[name] for name in CARRIED_HEADERS if name in ours.headers},
    )


# Each door's paths and its error handler, for requests that no route takes.
DoorHandler = Callable[[Exception], Response]
_DOORS: dict[str, tuple[Callable[[str], bool], DoorHandler]] = {}


def door_paths(name: str, owns: Callable[[str], bool], handler: DoorHandler) -> None:
    """Say which paths belong to door `name`: an unknown path or a wrong method there answers
    in its shape."""
    _DOORS[name] = (owns, handler)


def no_route(error: Exception) -> Response:
    """A request that routing refuses (an unknown path, a wrong method) has no blueprint, so
    no door's own handler sees it: under a door's paths (Ollama's /api/*, OpenAI's /v1/*) it
    still answers in that door's shape; anywhere else with the API's error object. Each door
    registers this same function as the app's 404 and 405 handler."""
    for owns, handler in _DOORS.values():
        if owns(request.path):
            return handler(error)
    return render_error(error)
