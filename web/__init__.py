"""The HTTP API: app factory, blueprints, schemas, errors, security."""

from web.app import create_app

__all__ = ["create_app"]
