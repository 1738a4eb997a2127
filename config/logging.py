"""Structured logging to stdout, with the request id on every line and secrets masked.

The request id lives in a context variable so that every layer (web, workers,
db) stamps it on its log lines without passing it around; gevent and threads
each see their own value.
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
_SECRET_KEY_PATTERN = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|authorization|cookie|credential", re.IGNORECASE
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
}


def mask_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask_value(key: str, value: Any) -> Any:
    """Mask `value` if `key` names a secret; recurse into containers; scrub strings."""
    if _SECRET_KEY_PATTERN.search(key) and value not in (None, ""):
        return MASK
    if isinstance(value, Mapping):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(key, v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


class ContextFilter(logging.Filter):
    """Stamp the request id and mask secrets before any handler formats the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.msg = mask_text(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and key != "request_id":
                setattr(record, key, mask_value(key, value))
        return True


class MaskedJsonFormatter(JsonFormatter):
    def formatException(self, ei: Any) -> str:  # type: ignore[override]
        return mask_text(logging.Formatter.formatException(self, ei))


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s")

    def formatException(self, ei: Any) -> str:
        return mask_text(super().formatException(ei))


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is at emit time (it may be swapped after start-up)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def build_handler(log_format: str) -> logging.Handler:
    handler = StdoutHandler()
    if log_format == "console":
        handler.setFormatter(ConsoleFormatter())
    else:
        handler.setFormatter(
            MaskedJsonFormatter(
                "{levelname}{name}{message}{request_id}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="ts",  # ISO 8601, UTC
            )
        )
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(level: str = "INFO", log_format: str = "json") -> None:
    """Route every logger (ours, Flask, Celery, SQLAlchemy) through one stdout handler."""
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
