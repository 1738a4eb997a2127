"""Rate limits (flask-limiter, counters in Redis): per user when authenticated, else per IP.

Limits are read through `configured_limit` at request time, so a run-time override (system
config) can replace the settings' values without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask
from flask_jwt_extended.exceptions import JWTExtendedException
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from jwt import PyJWTError

from config.settings import Settings
from web.errors import APIError
from web.extensions import current_config
from web.metrics import RATE_LIMITED, route_label
from web.security.principal import current_principal

log = logging.getLogger(__name__)

# Endpoint -> the settings field holding its stricter limit (keyed by IP: no user yet).
STRICT_LIMITS = {"auth.login": "ratelimit_login", "auth.register": "ratelimit_register"}
EXEMPT_ENDPOINTS = ("health.liveness", "health.readiness")


def caller_key() -> str:
    """`user:<id>` for an authenticated caller, `ip:<addr>` otherwise.

    A bad credential counts against the IP; the view then answers 401 for it.
    """
    try:
        principal = current_principal()
    except (APIError, JWTExtendedException, PyJWTError):
        principal = None
    if principal is not None:
        return f"user:{principal.user_id}"
    return f"ip:{get_remote_address()}"


def ip_key() -> str:
    return f"ip:{get_remote_address()}"


def configured_limit(name: str) -> Callable[[], str]:
    def limit() -> str:
        return str(getattr(current_config(), name))

    return limit


def _log_breach(limit: RequestLimit) -> None:
    log.info("rate limit exceeded: %s for %s", limit.limit, limit.key)
    RATE_LIMITED.labels(route_label()).inc()


def init_rate_limits(app: Flask, settings: Settings) -> Limiter:
    """Attach a limiter to `app`; call after every blueprint is registered."""
    app.config.update(
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=settings.limiter_storage_url,
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_KEY_PREFIX="omx:ratelimit",
        # With Redis gone, keep limiting per process rather than not at all.
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
    )
    limiter = Limiter(
        key_func=caller_key,
        app=app,
        # One budget per caller across every route (default limits would count per route).
        application_limits=[configured_limit("ratelimit_default")],
        on_breach=_log_breach,
    )
    for endpoint, setting in STRICT_LIMITS.items():
        # The decorator's wrapper does the checking, so the view must be replaced by it.
        view = app.view_functions[endpoint]
        limited = limiter.limit(configured_limit(setting), key_func=ip_key)(view)
        app.view_functions[endpoint] = limited  # type: ignore[assignment]
    for endpoint in EXEMPT_ENDPOINTS:
        limiter.exempt(app.view_functions[endpoint])
    app.extensions["ratelimit_limiter"] = limiter
    return limiter
