"""`@documented`: what a view takes and answers, recorded for the OpenAPI document.

The decorator only stores an `Operation` on the view function. It changes nothing about how the
view runs: views still parse their input with web.validation.load_body/load_query, and the
builder (web/openapi/builder.py) reads the record when it writes the document.

    @bp.post("/generate")
    @documented(
        "Submit a generate job",
        body=GenerateRequest,
        responses={202: Submitted, 409: "The model is disabled or no node serves it."},
    )
    @require(Permission.INFERENCE_SUBMIT)
    def generate() -> ...: ...

Put it between the route and the guard (as above) or anywhere below the route: wrappers made
with functools.wraps carry the record up, and the builder also looks through `__wrapped__`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

ViewT = TypeVar("ViewT", bound=Callable[..., Any])

ATTRIBUTE = "__openapi_operation__"
JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """One documented answer. `schema` is any type pydantic can describe (None: no body)."""

    schema: Any = None
    description: str | None = None
    media_types: tuple[str, ...] = (JSON,)


@dataclass(frozen=True)
class Header:
    """A request header the view reads (beyond Authorization, which security covers)."""

    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str | None = None
    tags: tuple[str, ...] = ()
    body: Any = None
    query: type[BaseModel] | None = None
    headers: Mapping[str, Header] = field(default_factory=dict)
    # Success answers (Reply) and the errors this view raises itself (status -> why); the
    # builder adds the errors every route of its kind can give (401, 403, 404, 415, 422, 429...)
    # unless the view says it never gives one (status -> None).
    responses: Mapping[int, Reply | str | None] = field(default_factory=dict)
    # The body of this view's errors; None: the error object. A front door that speaks another
    # API's error shape (Ollama's {"error": "..."}) names its own.
    error_body: Any = None
    # Names of security schemes, any one of which admits the caller. None: as the view's guard
    # says (web.security.principal.require -> access token or API key; no guard -> public).
    security: tuple[str, ...] | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)  # x-... keys, as they are


def _reply(status: int, value: Any) -> Reply | str | None:
    if isinstance(value, Reply | str):
        return value
    if status >= 400:
        if value is None:
            return None  # never given, although the route's kind suggests it
        raise TypeError(f"describe error {status} with a string (its body is the error object)")
    return Reply(schema=value)


def documented(
    summary: str,
    *,
    description: str | None = None,
    tags: Sequence[str] = (),
    body: Any = None,
    query: type[BaseModel] | None = None,
    headers: Mapping[str, Header] | None = None,
    responses: Mapping[int, Any] | None = None,
    error_body: Any = None,
    security: Sequence[str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Callable[[ViewT], ViewT]:
    """Record how the view is called and what it answers.

    `responses` maps a status to a schema type (a JSON body), None (no body), a `Reply`, or,
    for 4xx, a string saying when this view gives it (None: it never does, although the
    route's kind suggests it). `error_body` replaces the error object as the schema of every
    error answer. `description` defaults to the view's docstring.
    """
    replies = {status: _reply(status, value) for status, value in (responses or {}).items()}

    def record(view: ViewT) -> ViewT:
        operation = Operation(
            summary=summary,
            description=description if description is not None else _docstring(view),
            tags=tuple(tags),
            body=body,
            query=query,
            headers=dict(headers or {}),
            responses=replies,
            error_body=error_body,
            security=None if security is None else tuple(security),
            extensions=dict(extensions or {}),
        )
        setattr(view, ATTRIBUTE, operation)
        return view

    return record


def operation_of(view: Callable[..., Any]) -> Operation | None:
    """The record on `view` or on any function it wraps (flask-limiter replaces some views)."""
    seen: Callable[..., Any] | None = view
    while seen is not None:
        found = getattr(seen, ATTRIBUTE, None)
        if isinstance(found, Operation):
            return found
        seen = getattr(seen, "__wrapped__", None)
    return None


def _docstring(view: Callable[..., Any]) -> str | None:
    return inspect.getdoc(view) or None
