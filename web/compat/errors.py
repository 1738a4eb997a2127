"""Any error, as the API would answer it, for a front door to reshape into its protocol's
error body (each door's blueprint handler sees every exception first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Response

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
