"""The OpenAPI 3.1 document of a Flask app: every rule of its URL map, every method.

A view decorated with @documented (web/openapi/metadata.py) contributes its summary, input and
answers; the builder adds what follows from the route's kind, so views cannot forget it:

- who may call: a view guarded by `require(permission)` takes an access token or an API key and
  can answer 401 and 403 (its permission is named in `x-permission`);
- a path parameter can answer 404 (a malformed id is a 404 from routing, a missing or foreign
  one a 404 from the view: ids cannot be probed);
- a JSON body can answer 400, 413, 415 and 422, a query string 400 and 422;
- parameters make a URL that can outgrow the HTTP server's limit: 414 (gunicorn's own page);
- any request can be one the HTTP server cannot parse (a malformed header, a bad
  Content-Length): 400, gunicorn's own HTML page;
- every route but the probes can answer 429 (web/security/ratelimit.py).

Routes without a record (Flask's static route) are still listed, with their path parameters
and a `default` answer, so the document never hides a route. Answers carry OpenAPI links to
the calls they feed (links.py). The document is built once per app, on first use (see
views.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from flask import Flask
from werkzeug.routing import Rule

from web.openapi.links import add_links
from web.openapi.metadata import JSON, Operation, Reply, operation_of
from web.openapi.paths import openapi_path
from web.openapi.schemas import SchemaRegistry
from web.openapi.security import ACCESS_TOKEN, REFRESH_TOKEN, SCHEMES, SIGNED_IN
from web.schemas.errors import ErrorResponse, ValidationErrorResponse
from web.security.ratelimit import EXEMPT_ENDPOINTS

TITLE = "OllamaMax API"
VERSION = "v1"  # the API's, as its URLs say; the document changes with the code
DESCRIPTION = """\
Authenticated, queued inference in front of a fleet of Ollama GPU hosts.

Every error is JSON: `{"error": {"code", "message", "details"}}` (a 500 is a bug). Every
answer carries `X-Request-ID` (yours if it is safe, else a fresh one). Submit a job with
`POST /api/v1/inference/generate` or `/chat`, then follow it over the WebSocket its answer
links to, or read it with `GET /api/v1/inference/requests/{request_id}`.
"""

TAG_DESCRIPTIONS = {
    "health": "Liveness and readiness probes.",
    "auth": "Accounts and logins.",
    "users": "The caller's own account: profile, sessions, API keys, export, deletion.",
    "users_admin": "Admins manage accounts.",
    "inference": "Submit, list, read and cancel jobs.",
    "webhooks": "Completion webhooks: delivery logs, redelivery, the signing secret.",
    "models": "The model registry and its distribution onto nodes.",
    "nodes": "GPU hosts: what they hold, their load; drain, resize, decommission.",
    "system": "Run-time config, stats and the audit trail.",
    "realtime": "WebSockets: one request's events, and fleet topics.",
    "ollama_compat": "The Ollama API on OllamaMax (docs/compat.md).",
    "openai_compat": "The OpenAI API on OllamaMax (docs/compat.md).",
    "openapi": "This document and its human view.",
}

IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})  # Flask answers these for every GET route

BODY_ERRORS = {
    400: "The body is not valid JSON, or contains a NUL character.",
    413: "The body is larger than MAX_CONTENT_LENGTH.",
    415: "The body is not sent as Content-Type: application/json.",
    422: "The body does not fit the schema; `details` lists every problem.",
}
QUERY_ERRORS = {
    400: "The query string contains a NUL character.",
    422: "The query string does not fit the schema; `details` lists every problem.",
}
NOT_FOUND = "Nothing the caller may see at this path (an unknown, foreign or malformed id)."
MALFORMED = "A path parameter is not well-formed (an unknown id is refused on the socket)."
# gunicorn refuses a request line over limit_request_line (4094 bytes) itself, with its own
# HTML page: the app never sees it. Valid parameters fit (even percent-encoded 4-byte
# characters at their maxLength); over-long invalid ones may not.
URI_TOO_LONG = "The URL is longer than the HTTP server takes (4094 bytes); refused before the app."
SERVER_REFUSALS = frozenset({414})
HTML = "text/html"
# gunicorn also refuses a request it cannot parse, whatever the route, with its own 400 page.
UNPARSABLE = (
    "Or the HTTP server could not parse the request (a malformed header, a bad Content-Length, "
    "too many or too long headers): gunicorn's own HTML page, before the app."
)
UNAUTHORIZED = "No credential, or one that is invalid, expired or revoked."
FORBIDDEN = "The caller's role (or API key's scopes) lacks the `{}` permission."
RATE_LIMITED = "Over the caller's rate limit (per user, or per IP when anonymous); see Retry-After."
BLOCKLIST_DOWN = "Redis, which holds the token blocklist, is unreachable: tokens cannot be trusted."
# Resolving a credential reads the database, and so does every route that takes a body.
DATABASE_DOWN = "PostgreSQL is unreachable (`database_unavailable`); see Retry-After."
SWITCHING = "Switching Protocols: the WebSocket is open (frames and close codes: x-websocket)."
UNDESCRIBED = "Not described in this document yet: its input and answers are not listed."
NOT_AN_UPGRADE = "Not a WebSocket handshake: connect with a WebSocket client."


@dataclass(frozen=True)
class Route:
    rule: Rule
    method: str
    view: Callable[..., Any]
    operation: Operation | None

    @property
    def tag(self) -> str:
        return self.rule.endpoint.partition(".")[0] if "." in self.rule.endpoint else "other"

    @property
    def permission(self) -> str | None:
        return _wrapped_attribute(self.view, "required_permission")


def _wrapped_attribute(view: Callable[..., Any], name: str) -> Any:
    seen: Callable[..., Any] | None = view
    while seen is not None:
        if hasattr(seen, name):
            return getattr(seen, name)
        seen = getattr(seen, "__wrapped__", None)
    return None


def routes(app: Flask) -> Iterator[Route]:
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: (rule.rule, rule.endpoint)):
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            yield Route(rule, method, view, operation_of(view))


def build_document(app: Flask) -> dict[str, Any]:
    found = list(routes(app))
    registry = SchemaRegistry()
    registry.add(ErrorResponse, "serialization")
    registry.add(ValidationErrorResponse, "serialization")
    for route in found:
        _register(route.operation, registry)
    registry.generate()

    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for route in found:
        path, parameters = openapi_path(route.rule)
        operation = _render(route, parameters, registry)
        operation["operationId"] = _unique_id(route, operation_ids)
        paths.setdefault(path, {})[route.method.lower()] = operation
    add_links(paths)
    used_tags = sorted(
        {tag for item in paths.values() for op in item.values() for tag in op["tags"]}
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "tags": [{"name": tag, "description": TAG_DESCRIPTIONS.get(tag, "")} for tag in used_tags],
        "paths": paths,
        "components": {"schemas": registry.components, "securitySchemes": SCHEMES},
    }


def _register(operation: Operation | None, registry: SchemaRegistry) -> None:
    if operation is None:
        return
    if operation.body is not None:
        registry.add(operation.body, "validation")
    if operation.query is not None:
        registry.add(operation.query, "validation")
    for reply in operation.responses.values():
        if isinstance(reply, Reply) and reply.schema is not None:
            registry.add(reply.schema, "serialization")
    if operation.error_body is not None:
        registry.add(operation.error_body, "serialization")


def _unique_id(route: Route, taken: set[str]) -> str:
    base = route.rule.endpoint.replace(".", "_")
    candidate = base if base not in taken else f"{base}_{route.method.lower()}"
    while candidate in taken:
        candidate += "_"
    taken.add(candidate)
    return candidate


def _render(
    route: Route, path_parameters: list[dict[str, Any]], registry: SchemaRegistry
) -> dict[str, Any]:
    operation = route.operation
    if operation is None:
        return _undocumented(route, path_parameters)
    permission = route.permission
    security = operation.security
    if security is None:
        security = SIGNED_IN if permission is not None else ()

    parameters = list(path_parameters)
    if operation.query is not None:
        properties, required = registry.properties(operation.query, "validation")
        parameters += [
            _parameter(name, "query", schema, name in required)
            for name, schema in properties.items()
        ]
    parameters += [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": header.description,
            "schema": dict(header.schema),
        }
        for name, header in operation.headers.items()
    ]

    rendered: dict[str, Any] = {
        "tags": list(operation.tags) or [route.tag],
        "summary": operation.summary,
    }
    description = operation.description or ""
    if permission is not None:
        description = f"{description}\n\nRequires the `{permission}` permission.".strip()
        rendered["x-permission"] = str(permission)
    if description:
        rendered["description"] = description
    if parameters:
        rendered["parameters"] = parameters
    if operation.body is not None:
        rendered["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": registry.schema(operation.body, "validation")}},
        }
    rendered["responses"] = _responses(route, operation, security, bool(path_parameters), registry)
    rendered["security"] = [{name: []} for name in security]
    rendered.update(operation.extensions)
    return rendered


def _parameter(name: str, where: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    """A query parameter from a model's field. A query string has no null: an optional field
    is a parameter one leaves out, so pydantic's `anyOf [X, null]` becomes X."""
    schema = {key: value for key, value in schema.items() if key != "title"}
    description = schema.pop("description", None)
    branches = schema.get("anyOf")
    if isinstance(branches, list) and {"type": "null"} in branches:
        rest = [branch for branch in branches if branch != {"type": "null"}]
        del schema["anyOf"]
        schema = {**rest[0], **schema} if len(rest) == 1 else {"anyOf": rest, **schema}
        if schema.get("default", "") is None:
            del schema["default"]
    parameter = {"name": name, "in": where, "required": required, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _implied_errors(
    route: Route, operation: Operation, security: tuple[str, ...], has_path_parameters: bool
) -> dict[int, str]:
    """The errors that follow from the route's kind (see the module's docstring)."""
    if route.rule.websocket:
        errors = _websocket_errors(has_path_parameters)
    else:
        errors = _http_errors(route, operation, security, has_path_parameters)
    if has_path_parameters or operation.query is not None:
        errors[414] = URI_TOO_LONG
    if route.rule.endpoint not in EXEMPT_ENDPOINTS:
        errors[429] = RATE_LIMITED
    if security or (operation.body is not None and not route.rule.websocket):
        errors[503] = f"{errors[503]} {DATABASE_DOWN}" if 503 in errors else DATABASE_DOWN
    return errors


def _websocket_errors(has_path_parameters: bool) -> dict[int, str]:
    """Once upgraded, refusals are error frames and close codes (x-websocket), not statuses;
    before that, routing refuses a malformed id like any other route."""
    errors = {400: NOT_AN_UPGRADE}
    if has_path_parameters:
        errors[404] = MALFORMED
    return errors


def _http_errors(
    route: Route, operation: Operation, security: tuple[str, ...], has_path_parameters: bool
) -> dict[int, str]:
    errors: dict[int, str] = {}
    if operation.body is not None:
        errors.update(BODY_ERRORS)
    if operation.query is not None:
        for status, why in QUERY_ERRORS.items():
            errors[status] = f"{errors[status]} {why}" if status in errors else why
    if has_path_parameters:
        errors[404] = NOT_FOUND
    if security:
        errors[401] = UNAUTHORIZED
    if ACCESS_TOKEN in security or REFRESH_TOKEN in security:
        errors[503] = BLOCKLIST_DOWN
    if route.permission is not None:
        errors[403] = FORBIDDEN.format(route.permission)
    return errors


def _responses(
    route: Route,
    operation: Operation,
    security: tuple[str, ...],
    has_path_parameters: bool,
    registry: SchemaRegistry,
) -> dict[str, Any]:
    responses: dict[int, dict[str, Any]] = {}
    if route.rule.websocket:
        responses[101] = {"description": SWITCHING}
    errors = _implied_errors(route, operation, security, has_path_parameters)
    for status, reply in operation.responses.items():
        if reply is None:
            errors.pop(status, None)  # the view never gives it
        elif isinstance(reply, str):
            # The view's own reason comes first; the implied one still holds.
            errors[status] = f"{reply} {errors[status]}" if status in errors else reply
        else:
            responses[status] = _reply(status, reply, registry)
    for status, why in errors.items():
        if status in responses:
            continue  # the view documented this status with its own body (e.g. readiness 503)
        if status in SERVER_REFUSALS:
            responses[status] = {"description": why}
            continue
        model = operation.error_body or (
            ValidationErrorResponse if status == 422 else ErrorResponse
        )
        responses[status] = {
            "description": why,
            "content": {JSON: {"schema": registry.schema(model, "serialization")}},
        }
    _unparsable(responses)
    return {str(status): responses[status] for status in sorted(responses)}


def _unparsable(responses: dict[int, dict[str, Any]]) -> None:
    """gunicorn's 400, next to the route's own 400 if it has one."""
    own = responses.get(400)
    if own is None:
        responses[400] = {"description": UNPARSABLE, "content": {HTML: {}}}
        return
    own["description"] = f"{own['description']} {UNPARSABLE}"
    if "content" in own:
        own["content"].setdefault(HTML, {})


def _reply(status: int, reply: Reply, registry: SchemaRegistry) -> dict[str, Any]:
    rendered: dict[str, Any] = {"description": reply.description or HTTPStatus(status).phrase}
    if reply.schema is not None:
        schema = registry.schema(reply.schema, "serialization")
        rendered["content"] = {media_type: {"schema": schema} for media_type in reply.media_types}
    elif reply.media_types != (JSON,):
        rendered["content"] = {media_type: {} for media_type in reply.media_types}  # not JSON
    return rendered


def _undocumented(route: Route, path_parameters: list[dict[str, Any]]) -> dict[str, Any]:
    """A route without @documented: listed, so the document never hides a route, with what
    the URL map and the guard tell (no body or answer schemas)."""
    docstring = inspect.getdoc(route.view) or ""
    rendered: dict[str, Any] = {
        "tags": [route.tag],
        "summary": docstring.splitlines()[0] if docstring else route.rule.endpoint,
        "description": f"{UNDESCRIBED}\n\n{docstring}".strip(),
        "responses": {"default": {"description": "Not described yet."}},
    }
    if path_parameters:
        rendered["parameters"] = path_parameters
    if route.permission is not None:
        rendered["security"] = [{name: []} for name in SIGNED_IN]
        rendered["x-permission"] = str(route.permission)
    return rendered
