"""Rate limits, counted in Redis: every request spends from its caller's budget (per user
when authenticated, else per IP; web/security/budget.py, one Redis call), and login and
registration have stricter limits of their own by IP (flask-limiter).

Limits are read at request time, so a run-time override (system config) can replace the
settings' values without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Flask, Response, g, request
from flask_jwt_extended.exceptions import JWTExtendedException
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from jwt import PyJWTError
from redis import Redis

from config.settings import Settings
from web.errors import APIError, TooManyRequests
from web.extensions import current_runtime_config
from web.metrics import RATE_LIMITED, route_label
from web.security.budget import Budget, Verdict
from web.security.principal import current_principal

log = logging.getLogger(__name__)

# Endpoint -> the settings field holding its stricter limit (keyed by IP: no user yet).
STRICT_LIMITS = {"auth.login": "ratelimit_login", "auth.register": "ratelimit_register"}
STRICT_LIMITS_BLUEPRINT = "auth"  # the blueprint of every endpoint above
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
        return str(getattr(current_runtime_config(), name))

    return limit


def _log_breach(limit: RequestLimit) -> None:
    log.info("rate limit exceeded: %s for %s", limit.limit, limit.key)
    RATE_LIMITED.labels(route_label()).inc()


def _spend_budget(budget: Budget) -> None:
    endpoint = request.endpoint
    if not endpoint or endpoint in EXEMPT_ENDPOINTS or endpoint.endswith(".static"):
        return  # no route (a 404 of its own), or one that must always answer
    limits, caller = current_runtime_config().ratelimit_default, caller_key()
    verdict = budget.spend(limits, caller)
    g.rate_verdict = verdict
    if not verdict.allowed:
        log.info("rate limit exceeded: %s for %s", limits, caller)
        RATE_LIMITED.labels(route_label()).inc()
        retry_after = max(1, verdict.reset_at - int(time.time()))
        raise TooManyRequests(headers={"Retry-After": str(retry_after)})


def _describe_budget(response: Response) -> Response:
    verdict: Verdict | None = g.get("rate_verdict")
    if verdict is not None and "X-RateLimit-Limit" not in response.headers:
        response.headers["X-RateLimit-Limit"] = str(verdict.limit)
        response.headers["X-RateLimit-Remaining"] = str(verdict.remaining)
        response.headers["X-RateLimit-Reset"] = str(verdict.reset_at)
    return response


def init_rate_limits(app: Flask, settings: Settings, storage: Redis) -> Limiter:
    """Attach the budget (counted in `storage`, RATELIMIT_STORAGE_URL's Redis) and the
    strict limits to `app`; call after every blueprint is registered."""
    if settings.ratelimit_enabled:
        budget = Budget(storage, prefix="omx:budget")
        app.before_request(lambda: _spend_budget(budget))
        # Runs after flask-limiter's own hook (a blueprint's after_request hooks run before
        # the app's) and leaves the headers of a strict limit as they are.
        app.after_request(_describe_budget)
    app.config.update(
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=settings.limiter_storage_url,
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_KEY_PREFIX="omx:ratelimit",
        # With Redis gone, keep limiting per process rather than not at all.
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
    )
    app_hooks = _app_hooks(app)
    limiter = Limiter(key_func=caller_key, app=app, on_breach=_log_breach)
    if settings.ratelimit_enabled:  # disabled, flask-limiter hooks nothing
        _scope_new_hooks(app, app_hooks, STRICT_LIMITS_BLUEPRINT)
    for endpoint, setting in STRICT_LIMITS.items():
        # The decorator's wrapper does the checking, so the view must be replaced by it.
        view = app.view_functions[endpoint]
        limited = limiter.limit(configured_limit(setting), key_func=ip_key)(view)
        app.view_functions[endpoint] = limited  # type: ignore[assignment]
    app.extensions["ratelimit_limiter"] = limiter
    return limiter


Hooks = dict[str | None, list[Callable[..., object]]]  # by blueprint; None: every request


def _hook_registries(app: Flask) -> tuple[Hooks, Hooks, Hooks]:
    hooks = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    return hooks  # type: ignore[return-value]


def _app_hooks(app: Flask) -> list[list[Callable[..., object]]]:
    return [list(registry.get(None, ())) for registry in _hook_registries(app)]


def _scope_new_hooks(app: Flask, before: list[list[Callable[..., object]]], blueprint: str) -> None:
    """Move the app-wide request hooks added since `before` (flask-limiter's: check, headers,
    context reset) to `blueprint`'s requests, which alone carry its limits.

    flask-limiter hooks every request, to find the limits that apply to it; ours are only on
    login and registration (the budget is web/security/budget.py's), and it is given no
    default, application or meta limits. On every other request its hooks found nothing, at
    about 50 µs of the web's CPU each (two requests per REST job; bench/per_call.py).
    Flask runs a blueprint's hooks in the same places as the app's: its before_request after
    the app's, its after_request and teardown before the app's, so the order around the
    budget's hooks is unchanged for login and registration.

    Raises if the strict limits' views are not all `blueprint`'s, or if flask-limiter did not
    add one hook of each kind (a release that hooks itself otherwise must be looked at)."""
    outside = [name for name in STRICT_LIMITS if not name.startswith(f"{blueprint}.")]
    if outside:
        raise RuntimeError(f"flask-limiter's hooks would not run for {outside}")
    for registry, earlier in zip(_hook_registries(app), before, strict=True):
        added = [hook for hook in registry.get(None, []) if hook not in earlier]
        if len(added) != 1:
            raise RuntimeError(f"flask-limiter added {len(added)} hooks of a kind, not one")
        registry[None] = [hook for hook in registry.get(None, []) if hook in earlier]
        registry.setdefault(blueprint, []).extend(added)
