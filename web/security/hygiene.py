"""Request hygiene: CORS, security headers, X-Forwarded-* only from trusted proxies, and the
front doors' bodies taken as JSON whatever their Content-Type."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, request
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

EXPOSED_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    # The front doors' job (web/compat/jobs.py), for browser callers cut off mid-stream.
    "X-OllamaMax-Request-ID",
    "Link",
]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"]
# JSON answers never need to load anything; HTML pages set their own policy.
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"


JSON_MEDIA_TYPE = "application/json"
# Where a door body's own Content-Type is kept, for whoever wants to know what was sent.
SENT_CONTENT_TYPE = "ollamamax.sent_content_type"


def body_is_json_whatever_its_content_type(_endpoint: str | None, _values: Any) -> None:
    """For the front doors' blueprints (`bp.url_value_preprocessor`): Ollama parses a body as
    JSON whatever Content-Type says, and so do OpenAI's servers; `curl -d '{...}'` sends
    application/x-www-form-urlencoded, other clients nothing or text/plain. The native API
    refuses a body that is not sent as JSON with 415 (web/request_context.py, before any
    view); for a door's routes the request is marked JSON first, since URL value
    preprocessors run before the app's before_request hooks. So the input gate
    (web/validation.py: gate_request) checks a door's body as it checks the native API's
    before any view, and the doors read it with `get_json(force=True)` anyway
    (web/compat/jobs.py: json_object_body)."""
    if request.mimetype == JSON_MEDIA_TYPE:
        return
    request.environ[SENT_CONTENT_TYPE] = request.environ.get("CONTENT_TYPE", "")
    request.environ["CONTENT_TYPE"] = JSON_MEDIA_TYPE
    # Werkzeug keeps the parsed header once read: read it again from the environ.
    vars(request).pop("_parsed_content_type", None)


class TrustedProxyFix:
    """Apply Werkzeug's ProxyFix only when the direct peer is one of our proxies.

    ProxyFix alone trusts the last N hops from whoever connects, so a client talking to the
    app directly could claim any address.
    """

    def __init__(self, app: Any, networks: Iterable[str]) -> None:
        self.app = app
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_port=1)
        self.networks = [ipaddress.ip_network(network, strict=False) for network in networks]

    def _trusted(self, address: str | None) -> bool:
        try:
            peer = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(peer in network for network in self.networks)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self._trusted(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)


def add_security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if response.mimetype != "text/html":
        headers.setdefault("Content-Security-Policy", JSON_CSP)
    # flask-limiter sends Retry-After on every answer; it only means something on a refusal.
    if response.status_code not in (429, 503):
        headers.pop("Retry-After", None)
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
    return response


def init_hygiene(app: Flask, *, cors_origins: list[str], trusted_proxies: list[str]) -> None:
    if trusted_proxies:
        app.wsgi_app = TrustedProxyFix(app.wsgi_app, trusted_proxies)  # type: ignore[method-assign]
    if cors_origins:
        CORS(
            app,
            origins=cors_origins,
            # Credentials with a wildcard origin would let any site act as the user.
            supports_credentials="*" not in cors_origins,
            send_wildcard="*" in cors_origins,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    app.after_request(add_security_headers)
