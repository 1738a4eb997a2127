"""Flower's configuration file (`celery flower --conf=docker/flowerconfig.py`; compose and
`make run` pass it): Flower executes it before it builds its app.

Flower 2.2 serves /metrics to anyone, whatever its auth (mher/flower#1129 removed
`@authenticated` from it; /healthcheck stays open too, and says only "OK"). Celery's task
names, workers and counts are not for anonymous callers, so /metrics goes behind the same
basic auth as every other page, and Prometheus may read it, and only it, as `prometheus`
with METRICS_TOKEN as its password (or as a bearer token). That credential is checked here,
on /metrics alone: as one of FLOWER_BASIC_AUTH's pairs it would open every page and Flower's
API too, task sending and worker control included.

Tornado reads every global of this file whose name is a Flower option: none is meant as one
here, so every name has a leading underscore.
"""

import base64 as _base64
import binascii as _binascii
import hmac as _hmac
import os as _os
from typing import Any as _Any

import tornado.web as _web
from flower.views.monitor import Metrics as _Metrics


def _scrape_credential(handler: _Any) -> bool:
    """Whether the request carries METRICS_TOKEN: `Bearer <token>`, or Basic
    `prometheus:<token>` (constant-time compare; no token set, no way in)."""
    token = _os.environ.get("METRICS_TOKEN", "")
    scheme, _, value = handler.request.headers.get("Authorization", "").partition(" ")
    if not token or not value:
        return False
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            user, _, given = _base64.b64decode(value.strip()).decode().partition(":")
        except (_binascii.Error, UnicodeDecodeError):
            return False
        if user != "prometheus":
            return False
    else:
        return False
    return _hmac.compare_digest(given.encode(), token.encode())


def _guarded(flower_get: _Any) -> _Any:
    behind_login = _web.authenticated(flower_get)

    async def get(self: _Any) -> None:
        if _scrape_credential(self):
            await flower_get(self)
        else:
            await behind_login(self)

    get._ollamamax_guarded = True  # type: ignore[attr-defined]
    return get


if not getattr(_Metrics.get, "_ollamamax_guarded", False):  # once, whoever loads it again
    _Metrics.get = _guarded(_Metrics.get)
