"""/api/v1/system/*: run-time config (admins), stats (operators), the audit trail (admins)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("system", __name__, url_prefix="/api/v1/system")
