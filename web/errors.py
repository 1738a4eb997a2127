"""The one JSON error contract: `{"error": {"code", "message", "details"}}`.

Views raise `APIError` subclasses; everything else that can go wrong (HTTP
errors from routing, validation failures, integrity errors, bugs) is mapped
here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import PyJWTError
from pydantic import ValidationError
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from config.logging import request_id_var

log = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 400
    code = "bad_request"
    message = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.code = code or self.code
        self.details = details
        self.headers = headers or {}


class BadRequest(APIError):
    pass


class InvalidCharacters(BadRequest):
    """A NUL character in a body or query string (the input gate, web/validation.py)."""

    code = "invalid_characters"
    message = "The request contains a NUL character."


class InvalidNumber(BadRequest):
    """NaN, Infinity or a number that overflows to infinity in a body."""

    code = "invalid_number"
    message = "The body contains a number that is not finite."


class TooDeep(BadRequest):
    """A body nesting arrays and objects deeper than INPUT_MAX_DEPTH."""

    code = "too_deep"
    message = "The body is nested too deeply."


class TooLarge(BadRequest):
    """A string longer than INPUT_MAX_STRING_CHARS, or an array or object with more than
    INPUT_MAX_ITEMS items (a 400: the body as a whole may be small enough)."""

    code = "too_large"
    message = "A value in the body is too large."


class Unauthorized(APIError):
    status_code = 401
    code = "unauthorized"
    message = "Authentication is required."


class Forbidden(APIError):
    status_code = 403
    code = "forbidden"
    message = "You are not allowed to do this."


class NotFound(APIError):
    status_code = 404
    code = "not_found"
    message = "The resource was not found."


class Conflict(APIError):
    status_code = 409
    code = "conflict"
    message = "The request conflicts with the current state of the resource."


class UnsupportedMediaType(APIError):
    status_code = 415
    code = "unsupported_media_type"
    message = "Send the body as JSON with Content-Type: application/json."


class ValidationFailed(APIError):
    status_code = 422
    code = "validation_error"
    message = "The request is not valid."


class TooManyRequests(APIError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests; slow down."


# What a caller is told to wait before asking again while a dependency (PostgreSQL, Redis)
# is away. Recovery needs no restart: pools reconnect on the first request after it is back.
RETRY_AFTER_S = 2


class ServiceUnavailable(APIError):
    status_code = 503
    code = "service_unavailable"
    message = "A dependency is unavailable; try again shortly."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(RETRY_AFTER_S)})
        super().__init__(message, **kwargs)


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    message = "The database is unavailable; try again shortly."


# Codes for errors that Werkzeug raises itself (routing, body size, ...).
HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def validation_details(error: ValidationError, prefix: str = "body") -> list[dict[str, str]]:
    """Field errors without echoing the submitted values (they may be secrets)."""
    return [
        {
            "field": ".".join(str(part) for part in (prefix, *item["loc"])),
            "message": item["msg"],
            "type": item["type"],
        }
        for item in error.errors(include_url=False, include_input=False, include_context=False)
    ]


def handle_api_error(error: APIError) -> Response:
    return error_response(
        error.status_code, error.code, error.message, error.details, error.headers
    )


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code = HTTP_ERROR_CODES.get(status) or (error.name or "error").lower().replace(" ", "_")
    details = None
    headers = {}
    if status == 405:
        allowed = sorted(error.valid_methods or []) if hasattr(error, "valid_methods") else []
        details = {"allowed_methods": allowed}
        headers["Allow"] = ", ".join(allowed)
    if status >= 500:
        return handle_unexpected_error(error)
    message = error.description or error.name
    if status == 404:
        message = f"No resource at {request.method} {request.path}."
    return error_response(status, code, message, details, headers)


def handle_validation_error(error: ValidationError) -> Response:
    return error_response(
        422, ValidationFailed.code, ValidationFailed.message, validation_details(error)
    )


UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"


def handle_integrity_error(error: IntegrityError) -> Response:
    """A duplicate, or a reference to a row that went away meanwhile, is a 409. Any other
    violation (NOT NULL, CHECK) means validation let bad data through: a bug, so a 500."""
    pgcode = getattr(error.orig, "pgcode", None)
    if pgcode == UNIQUE_VIOLATION:
        return error_response(409, Conflict.code, "This already exists.")
    if pgcode == FOREIGN_KEY_VIOLATION:
        return error_response(409, Conflict.code, "A resource this refers to no longer exists.")
    return handle_unexpected_error(error)


def database_unreachable(error: BaseException) -> bool:
    """Whether `error` says the database could not be reached or used, rather than refusing
    a statement: no connection (refused, reset, shutting down, starting up; psycopg2 calls
    these OperationalError), a connection already closed (InterfaceError), one that died
    under a statement (a disconnect SQLAlchemy caught and invalidated), or no pooled
    connection free within DB_POOL_TIMEOUT_S."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def database_unavailable_response(message: str = DatabaseUnavailable.message) -> Response:
    """503 `database_unavailable` with Retry-After and the request id (for the logs)."""
    error = DatabaseUnavailable(message, details={"request_id": request_id_var.get()})
    return handle_api_error(error)


def handle_database_error(error: SQLAlchemyError) -> Response:
    """The database away is a 503 the caller may retry, never a 500: whether it failed the
    caller's lookup before any view ran, a view's query or the commit. Anything else the
    database refused is a conflict or a bug."""
    if isinstance(error, IntegrityError):
        return handle_integrity_error(error)
    if not database_unreachable(error):
        return handle_unexpected_error(error)
    # One line, no traceback: during an outage every request would log one.
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    log.warning("database unavailable: %s: %s", type(error).__name__, reason[0] if reason else "")
    return database_unavailable_response()


def handle_unexpected_error(error: Exception) -> Response:
    request_id = request_id_var.get()
    log.error("unhandled error: %s", type(error).__name__, exc_info=error)
    return error_response(
        500,
        "internal_error",
        "An unexpected error occurred. Quote the request id when reporting it.",
        {"request_id": request_id},
    )


def handle_token_error(error: JWTExtendedException | PyJWTError) -> Response:
    """A bearer that is not a token we can accept (malformed, foreign, expired, revoked), as
    the app answers it everywhere: flask-jwt-extended registers a handler for each of its and
    PyJWT's errors on the app, which calls our loaders (web/security/tokens.py: 401
    `invalid_token`, `token_expired`, `token_revoked`)."""
    handlers = current_app.error_handler_spec.get(None, {}).get(None, {})
    for kind in type(error).__mro__:
        handler = handlers.get(kind)
        if handler is not None and kind not in (Exception, BaseException):
            return current_app.make_response(current_app.ensure_sync(handler)(error))
    return handle_unexpected_error(error)


def render_error(error: Exception) -> Response:
    """Any exception as our JSON error response: for front doors that reshape it into
    another protocol's error object (their blueprint handler sees every exception first,
    before the app's own handlers, the token errors' among them)."""
    if isinstance(error, APIError):
        return handle_api_error(error)
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    if isinstance(error, ValidationError):
        return handle_validation_error(error)
    if isinstance(error, SQLAlchemyError):
        return handle_database_error(error)
    if isinstance(error, JWTExtendedException | PyJWTError):
        return handle_token_error(error)
    return handle_unexpected_error(error)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(IntegrityError, handle_integrity_error)
    app.register_error_handler(DBAPIError, handle_database_error)
    app.register_error_handler(PoolTimeout, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected_error)
