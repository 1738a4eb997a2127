"""Authorization matrix rows for /api/v1/system/* (merged into MATRIX).

The shorthands mean what they mean in test_authorization_matrix.py; they are spelt out here
because importing them from there would be a cycle.
"""

from __future__ import annotations

from typing import Any

OK = "ok"  # allowed: any 2xx, or 422/400 for the empty body the probes send
ADMIN_ONLY = {"anonymous": 401, "owner": 403, "other": 403, "operator": 403, "admin": OK}
STAFF = {"anonymous": 401, "owner": 403, "other": 403, "operator": OK, "admin": OK}

SYSTEM_MATRIX: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/v1/system/config"): ADMIN_ONLY,
    # The probe's `{}` names no setting: 422 for an admin, nothing stored.
    ("PUT", "/api/v1/system/config"): ADMIN_ONLY,
    ("GET", "/api/v1/system/stats"): STAFF,
    ("GET", "/api/v1/system/audit"): ADMIN_ONLY,
}
