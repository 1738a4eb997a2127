"""Authorization matrix rows for /api/v1/models/* and /api/v1/nodes/* (merged into MATRIX).

Users read the fleet; operators and admins change it."""

from __future__ import annotations

from typing import Any

OK = "ok"
READ = {"anonymous": 401, "owner": OK, "other": OK, "operator": OK, "admin": OK}
WRITE = {"anonymous": 401, "owner": 403, "other": 403, "operator": OK, "admin": OK}

FLEET_MATRIX: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/v1/models/"): READ,
    ("POST", "/api/v1/models/"): WRITE,
    ("GET", "/api/v1/models/<uuid:model_id>"): READ,
    ("PUT", "/api/v1/models/<uuid:model_id>"): WRITE,
    ("DELETE", "/api/v1/models/<uuid:model_id>"): WRITE,
    ("GET", "/api/v1/models/<uuid:model_id>/replicas"): READ,
    ("POST", "/api/v1/models/<uuid:model_id>/pull"): WRITE,
    ("DELETE", "/api/v1/models/<uuid:model_id>/replicas/<uuid:node_id>"): WRITE,
    ("GET", "/api/v1/nodes/"): READ,
    ("GET", "/api/v1/nodes/<uuid:node_id>"): READ,
    ("PUT", "/api/v1/nodes/<uuid:node_id>"): WRITE,
    ("DELETE", "/api/v1/nodes/<uuid:node_id>"): WRITE,
    ("GET", "/api/v1/nodes/<uuid:node_id>/health"): READ,
}
