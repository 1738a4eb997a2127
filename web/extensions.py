"""Typed access to what `create_app` keeps in `app.extensions`, for code inside a request."""

from __future__ import annotations

from celery import Celery
from flask import current_app

from config.runtime import RuntimeConfig
from config.settings import Settings


def current_settings() -> Settings:
    settings: Settings = current_app.extensions["settings"]
    return settings


def current_runtime_config() -> RuntimeConfig:
    """The run-time config (system config over the environment), at most seconds old."""
    return current_app.extensions["runtime_config"].current()  # type: ignore[no-any-return]


def current_celery() -> Celery:
    """The app's Celery client, for publishing (workers/dispatch.py)."""
    celery: Celery = current_app.extensions["celery"]
    return celery
