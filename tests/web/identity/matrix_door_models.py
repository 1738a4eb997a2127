"""Authorization matrix rows for the Ollama door's model management (merged into MATRIX).

Pulls and removals are the fleet's, so they take its permission (fleet:write: operators and
admins); what the fleet cannot do answers 400 saying why, to whoever may otherwise ask for
that kind of thing (fleet:write for copy, create, push and blobs)."""

from __future__ import annotations

from typing import Any

OK = "ok"
FLEET_WRITE = {"anonymous": 401, "owner": 403, "other": 403, "operator": OK, "admin": OK}
FLEET_WRITE_REFUSED = {"anonymous": 401, "owner": 403, "other": 403, "operator": 400, "admin": 400}

DOOR_MODELS_MATRIX: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/pull"): FLEET_WRITE,
    ("DELETE", "/api/delete"): FLEET_WRITE,
    ("POST", "/api/copy"): FLEET_WRITE_REFUSED,
    ("POST", "/api/create"): FLEET_WRITE_REFUSED,
    ("POST", "/api/push"): FLEET_WRITE_REFUSED,
    ("POST", "/api/blobs/<digest>"): FLEET_WRITE_REFUSED,
}
