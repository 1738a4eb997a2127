"""Structured logging to stdout, with the request id on every line and secrets masked.

The request id lives in a context variable so that every layer (web, workers,
db) stamps it on its log lines without passing it around; gevent and threads
each see their own value.

Masking happens in the formatters, on a copy of each record: other handlers
(pytest's caplog, an error tracker) still see the original message template.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Celery's loggers that speak at INFO for every task (received, succeeded, beat's "Sending
# due task"): heard only at DEBUG (configure_logging).
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat")

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
# In ASCII text, each pattern above needs one of these words (lower-cased; "key" stands for
# the spellings of "api key"). Most text holds none (paths, statuses, addresses, ids), and
# looking for them costs a tenth of running the patterns: the access line's masking was most
# of its cost. Not in other text: the patterns' (?i) matches long s (U+017F) for "s" and
# dotless i (U+0131) for "i", which lower() leaves as they are.
_SECRET_TEXT_WORDS = ("bearer", "basic", "pass", "secret", "token", "key", "authorization", "://")
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
}


_CACHED_KEY_LENGTH = 64  # longer names are checked every time: a logged payload's keys


def is_secret_key(key: str) -> bool:
    return _is_secret_name(key) if len(key) <= _CACHED_KEY_LENGTH else _names_secret(key)


def _names_secret(key: str) -> bool:
    return bool(SECRET_KEY_PATTERN.search(key.lower().replace("-", "_")))


# Cached: the names are the code's own `extra=` keys and its payloads' fields, few.
_is_secret_name = functools.lru_cache(maxsize=1024)(_names_secret)


def mask_text(text: str) -> str:
    if text.isascii():
        lowered = text.lower()
        if not any(word in lowered for word in _SECRET_TEXT_WORDS):
            return text
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
    # logging.makeLogRecord(vars(record)) without its LogRecord.__init__, whose attributes
    # the update replaces anyway.
    safe = logging.LogRecord.__new__(logging.LogRecord)
    safe.__dict__.update(vars(record))
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


# The console format's colours (ANSI SGR codes): the level stands out, the rest recedes.
_RESET = "\033[0m"
_LEVEL_STYLES = {
    "DEBUG": "2",  # dim
    "INFO": "32",  # green
    "WARNING": "33",  # yellow
    "ERROR": "31",  # red
    "CRITICAL": "1;31",  # bold red
}
_QUIET_STYLE = "2"  # time, logger, extra keys


def wants_colour(stream: Any) -> bool:
    """Colour on a terminal, or anywhere with FORCE_COLOR (a supervisor that pipes its
    children's output to one); never with NO_COLOR (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR", "").strip().lower() not in ("", "0", "false", "no"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


_CONSOLE_VALUE_MAX = 200  # a console line stays one line; JSON keeps the whole value


def _console_value(value: Any) -> str:
    plain = isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value)
    text = str(value) if plain else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= _CONSOLE_VALUE_MAX else text[:_CONSOLE_VALUE_MAX] + "..."


class ConsoleFormatter(logging.Formatter):
    """One line per record for people: `HH:MM:SS LEVEL logger: message key=value ...`, the
    request id and any extras as key=value pairs, masked like the JSON format."""

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}{_RESET}" if self.colour else text

    def format(self, record: logging.LogRecord) -> str:
        safe = _masked_copy(record)
        message = safe.getMessage()
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [
            self._paint(_QUIET_STYLE, clock),
            self._paint(_LEVEL_STYLES.get(record.levelname, "0"), f"{record.levelname:<7}"),
            self._paint(_QUIET_STYLE, f"{record.name}:"),
            message,
            *self._pairs(safe, message),
        ]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + mask_text(self.formatStack(record.stack_info))
        return line

    def _pairs(self, safe: logging.LogRecord, message: str) -> list[str]:
        """Extras as key=value, less those the message already says (`GET /x 200` and
        path=/x, status=200), then the request id."""
        said = {word.strip(",;:()") for word in message.split()}
        pairs = {
            key: value
            for key, value in vars(safe).items()
            if key not in _RECORD_ATTRS and value is not None and str(value) not in said
        }
        request_id = getattr(safe, "request_id", None)
        if request_id:
            pairs["request_id"] = request_id
        return [
            self._paint(_QUIET_STYLE, f"{key}=") + _console_value(v) for key, v in pairs.items()
        ]

    def formatException(self, ei: Any) -> str:
        return mask_text(super().formatException(ei))


def build_formatter(log_format: str, stream: Any = None) -> logging.Formatter:
    if log_format == "console":
        return ConsoleFormatter(colour=wants_colour(stream or sys.stdout))
    return MaskedJsonFormatter(
        "{levelname}{name}{message}{request_id}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="ts",  # ISO 8601, UTC
    )


def build_handler(log_format: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(build_formatter(log_format, handler.stream))
    return handler


def configure_logging(
    level: str = "INFO", log_format: str = "json", logger_levels: Mapping[str, str] | None = None
) -> None:
    """Route every logger (ours, Flask, Celery, SQLAlchemy) through one stdout handler.
    `logger_levels` (LOG_LEVELS) sets single loggers' levels over the defaults below."""
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
    # httpx2 is the client the openai package brings.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Celery's two lines per task ("received", "succeeded in") say nothing the job's row,
    # its events and the metrics do not, and at a hundred jobs a second they cost a tenth of
    # a worker's CPU (docs/benchmarks.md); on a console they bury everything else under
    # beat's sweeps. Only at DEBUG; a failed task still logs at ERROR.
    quiet = logging.getLevelName(level.upper()) > logging.DEBUG
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    for name, named_level in (logger_levels or {}).items():
        logging.getLogger(name).setLevel(named_level)
