"""Authorization matrix rows for /api/v1/models/* and /api/v1/nodes/* (merged into MATRIX)."""

from __future__ import annotations

from typing import Any

FLEET_MATRIX: dict[tuple[str, str], dict[str, Any]] = {}
