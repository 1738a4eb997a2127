"""Gunicorn's logger without its access log (config/gunicorn.py names it `logger_class`).

The app writes one structured access line per request (web/request_context.py). Gunicorn
counts its own access log as wanted whenever a logging config is given, as ours is (for its
error log's format), and then formats one line per request that nobody reads.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger


class NoAccessLogger(Logger):  # type: ignore[misc]
    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """The app's own access line says it all."""
