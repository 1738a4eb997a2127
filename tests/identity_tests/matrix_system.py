"""Authorization matrix rows for /api/v1/system/* (merged into MATRIX)."""

from __future__ import annotations

from typing import Any

SYSTEM_MATRIX: dict[tuple[str, str], dict[str, Any]] = {}
