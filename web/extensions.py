"""Typed access to what `create_app` keeps in `app.extensions`, for code inside a request."""

from __future__ import annotations

from flask import current_app

from config.settings import Settings


def current_settings() -> Settings:
    settings: Settings = current_app.extensions["settings"]
    return settings
