"""Structured logging to stdout, with the request id on every line and secrets masked.

The request id lives in a context variable so that every layer (web, workers,
db) stamps it on its log lines without passing it around; gevent and threads
each see their own value.

Masking happens in the formatters, on a copy of each record: other handlers
(pytest's caplog, an error tracker) still see the original message template.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

MASK = "***"
# Key names (normalised to snake_case) whose values are secrets. Anchored, so that
# `prompt_tokens`, `max_tokens` or `bypass_cache` stay readable.
SECRET_KEY_PATTERN = re.compile(
    r"(^|_)(password|passwd|pwd|secret|secret_key|api_key|apikey|token|access_token|"
    r"refresh_token|id_token|authorization|cookie|set_cookie|credentials?|"
    r"password_hash|key_hash)$"
)
# Secrets that show up inside free text: "Bearer <token>", "password=...", URL credentials.
_SECRET_TEXT_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    (
        re.compile(
            r"(?i)\b(pass(?:word|wd)?|secret|token|api[_-]?key|authorization)"
            r"(\"?\s*[:=]\s*\"?)[^\s\"',;&]+"
        ),
        r"\1\2" + MASK,
    ),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@"), r"\1" + MASK + "@"),
)
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
}


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY_PATTERN.search(key.lower().replace("-", "_")))


def mask_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask_value(key: str, value: Any) -> Any:
    """Mask `value` if `key` names a secret; recurse into containers; scrub strings."""
    if is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, Mapping):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(key, v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


_base_record_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record, whichever handler sees it, carries the current request id."""
    record = _base_record_factory(*args, **kwargs)
    record.request_id = request_id_var.get()
    return record


def _masked_copy(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of `record` with its message rendered and masked, and its extras masked.

    A call whose arguments do not fit its format string still logs (with the raw parts)
    instead of raising into the code that logged.
    """
    safe = logging.makeLogRecord(vars(record))
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = f"{record.msg!s} {record.args!r}"
    safe.msg, safe.args = mask_text(message), None
    safe.exc_text = None  # re-rendered through our formatException, masked
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRS:
            setattr(safe, key, mask_value(key, value))
    return safe


class MaskedJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(_masked_copy(record))

    def formatException(self, ei: Any) -> str:  # type: ignore[override]
        return mask_text(logging.Formatter.formatException(self, ei))


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(_masked_copy(record))

    def formatException(self, ei: Any) -> str:
        return mask_text(super().formatException(ei))


def build_formatter(log_format: str) -> logging.Formatter:
    if log_format == "console":
        return ConsoleFormatter()
    return MaskedJsonFormatter(
        "{levelname}{name}{message}{request_id}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="ts",  # ISO 8601, UTC
    )


def build_handler(log_format: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(build_formatter(log_format))
    return handler


def configure_logging(level: str = "INFO", log_format: str = "json") -> None:
    """Route every logger (ours, Flask, Celery, SQLAlchemy) through one stdout handler."""
    logging.setLogRecordFactory(_record_with_request_id)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_ollamamax", False):
            root.removeHandler(existing)
    handler = build_handler(log_format)
    handler._ollamamax = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Werkzeug's own access log duplicates ours and is not structured.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # One line per engine HTTP call (every heartbeat) is noise; failures surface as errors.
    logging.getLogger("httpx").setLevel(logging.WARNING)
