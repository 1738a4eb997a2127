"""The application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface
from redis import BlockingConnectionPool, Redis

from config.logging import configure_logging
from config.settings import Settings, build_settings
from db.session import Database
from web import cli, health
from web.auth import views as auth_views
from web.compat import ollama as ollama_compat
from web.compat import openai as openai_compat
from web.database import init_database
from web.errors import register_error_handlers
from web.fleet import nodes as fleet_nodes
from web.fleet import registry as fleet_models
from web.inference import views as inference_views
from web.metrics import init_metrics
from web.openapi import views as openapi_views
from web.realtime.hub import Hub
from web.realtime.pulse import Pulse
from web.realtime.relay import Relay
from web.realtime.socket import SocketRegistry
from web.realtime.views import init_realtime
from web.request_context import init_request_context
from web.security.hygiene import init_hygiene
from web.security.principal_cache import PrincipalCache
from web.security.ratelimit import init_rate_limits
from web.security.tokens import init_jwt
from web.system import views as system_views
from web.users import admin as users_admin
from web.users import quotas as users_quotas
from web.users import views as users_views
from web.webhooks import views as webhook_views
from workers.celery_app import create_celery_app
from workers.events import EventLog
from workers.runtime_config import RuntimeConfigSource


def _redis(url: str, settings: Settings) -> Redis:
    """A client whose pool makes a greenlet wait for a free connection (up to the Redis
    timeout) rather than fail: one gevent process may have a thousand of them asking at once."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)


class NoCookieSession(SessionInterface):
    """Every caller is known by its bearer token or API key: the API keeps no cookie session.
    Flask's default still built a signing serializer and a session object per request, and
    looked for a cookie; here `flask.session` is Flask's NullSession, which refuses writes."""

    def open_session(self, app: Flask, request: Request) -> None:
        return None

    def save_session(self, app: Flask, session: object, response: Response) -> None:
        return None


def _web_database(settings: Settings) -> Database:
    """The pool keeps every connection it opens, up to DB_POOL_SIZE + DB_MAX_OVERFLOW.

    SQLAlchemy closes an overflow connection when it comes back to a full pool. A gevent
    process's concurrency comes in bursts: at 64 concurrent submissions the overflow was
    closed and reopened all the time, a PostgreSQL backend started per request or so
    (PostgreSQL's CPU per submission 1.0 ms with that churn, 0.6 without; bench.pipeline,
    docs/benchmarks.md). The most this process opens stays what the operator set; it keeps
    them, as it keeps DB_POOL_SIZE."""
    return Database.from_settings(
        settings, pool_size=settings.db_pool_size + settings.db_max_overflow, max_overflow=0
    )


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the API. `overrides` replace settings read from the environment (tests)."""
    settings = build_settings(overrides)
    configure_logging(settings.log_level, settings.log_format, settings.log_levels)

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        JWT_SECRET_KEY=settings.jwt_secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        TESTING=settings.app_env == "test",
    )
    app.session_interface = NoCookieSession()
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep code, message, details in order
    app.extensions["settings"] = settings
    app.extensions["redis"] = _redis(settings.cache_url, settings)

    # Order matters: after_request hooks run in reverse, so the access log sees the final status.
    init_request_context(app)
    init_database(app, _web_database(settings))
    register_error_handlers(app)
    init_jwt(app, settings)
    init_hygiene(app, cors_origins=settings.cors_origins, trusted_proxies=settings.trusted_proxies)

    health.init_health(app, settings)
    app.extensions["celery"] = create_celery_app(settings)  # publishes to this app's broker
    app.extensions["principal_cache"] = PrincipalCache(
        app.extensions["redis"], ttl_s=settings.principal_cache_s
    )
    # Events and cancel signals live where the workers look for them: REDIS_URL (the cache
    # may be moved elsewhere with CACHE_REDIS_URL).
    events_redis = _redis(settings.redis_url, settings)
    app.extensions["events"] = EventLog(events_redis, ttl_s=settings.event_ttl_s)
    app.extensions["runtime_config"] = RuntimeConfigSource(
        settings, app.extensions["db"], app.extensions["redis"]
    )
    sockets = SocketRegistry()
    app.extensions["relay"] = Relay(
        # Started on first use, so each gunicorn worker gets its own after the fork.
        hub=Hub(settings.redis_url, keepalive_s=settings.ws_heartbeat_s),
        events=app.extensions["events"],
        sockets=sockets,
        pulse=Pulse(
            events_redis,
            app.extensions["db"],
            sockets,
            interval_s=settings.system_metrics_interval_s,
        ),
    )
    for blueprint in (
        auth_views.bp,
        users_views.bp,
        users_admin.bp,
        users_quotas.bp,
        inference_views.bp,
        fleet_models.bp,
        fleet_nodes.bp,
        system_views.bp,
        openapi_views.bp,
        ollama_compat.bp,
        openai_compat.bp,
        webhook_views.bp,
    ):
        app.register_blueprint(blueprint)
    init_realtime(app)
    init_metrics(app)
    init_rate_limits(app, settings, _redis(settings.limiter_storage_url, settings))
    cli.register(app)
    return app
