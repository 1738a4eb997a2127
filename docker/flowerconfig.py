"""Flower's configuration file (`celery flower --conf=docker/flowerconfig.py`; compose and
`make run` pass it): Flower executes it before it builds its app.

Flower 2.2 serves /metrics to anyone, whatever its auth (mher/flower#1129 removed
`@authenticated` from it; /healthcheck stays open too, and says only "OK"). Celery's task
names, workers and counts are not for anonymous callers, so /metrics goes behind the same
basic auth as every other page. Prometheus logs in as `prometheus` with METRICS_TOKEN as
its password: when METRICS_TOKEN is set, that pair joins FLOWER_BASIC_AUTH's.

Tornado reads every global of this file whose name is a Flower option: only `basic_auth`
is meant as one here, so everything else has a leading underscore.
"""

import os as _os

import tornado.web as _web
from flower.views.monitor import Metrics as _Metrics

if not getattr(_Metrics.get, "__wrapped__", None):  # once, whoever loads this file again
    _Metrics.get = _web.authenticated(_Metrics.get)

_pairs = [p for p in _os.environ.get("FLOWER_BASIC_AUTH", "").split(",") if p]
_token = _os.environ.get("METRICS_TOKEN", "")
if _pairs and _token:
    basic_auth = [*_pairs, f"prometheus:{_token}"]
