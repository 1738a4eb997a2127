"""Flask rules as OpenAPI paths: `/requests/<uuid:request_id>` -> `/requests/{request_id}`,
with a path parameter whose schema says what the converter accepts."""

from __future__ import annotations

import re
from typing import Any

from werkzeug.routing import Rule

# <converter(arguments):name> or <name>, as Werkzeug writes them.
_VARIABLE = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<arguments>[^)]*)\))?:)?"
    r"(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)

# What each built-in converter matches. A value that does not fit never reaches the view:
# routing answers 404, so the builder documents a 404 for every route with parameters.
_CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "default": {"type": "string", "pattern": "^[^/]+$"},
    "string": {"type": "string", "pattern": "^[^/]+$"},
    "path": {"type": "string", "description": "May contain slashes."},
    "int": {"type": "integer", "minimum": 0},
    "float": {"type": "number", "minimum": 0},
    "uuid": {"type": "string", "format": "uuid"},
}


def _schema(converter: str | None, arguments: str | None) -> dict[str, Any]:
    if converter == "any" and arguments:
        choices = [item.strip().strip("'\"") for item in arguments.split(",")]
        return {"type": "string", "enum": choices}
    return dict(_CONVERTER_SCHEMAS.get(converter or "default", {"type": "string"}))


def openapi_path(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    """The templated path and its path parameters, in the order they appear."""
    parameters = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": _schema(match["converter"], match["arguments"]),
            }
        )
        return "{" + name + "}"

    return _VARIABLE.sub(replace, rule.rule), parameters
