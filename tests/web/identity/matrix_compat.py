"""Authorization matrix rows for the front doors and /metrics (merged into MATRIX).

The doors take the same credentials as the native API (a key or a JWT as a bearer token):
users may read the fleet and submit; a liveness probe and the version are public, as on
Ollama. /metrics is public unless METRICS_TOKEN is set (not in these tests)."""

from __future__ import annotations

from typing import Any

OK = "ok"
PUBLIC = {"anonymous": OK, "owner": OK, "other": OK, "operator": OK, "admin": OK}
SIGNED_IN = {"anonymous": 401, "owner": OK, "other": OK, "operator": OK, "admin": OK}

COMPAT_MATRIX: dict[tuple[str, str], dict[str, Any]] = {
    # Ollama (web/compat/ollama.py)
    ("GET", "/"): PUBLIC,
    ("GET", "/api/version"): PUBLIC,
    ("GET", "/api/tags"): SIGNED_IN,
    ("GET", "/api/ps"): SIGNED_IN,
    ("POST", "/api/show"): SIGNED_IN,
    ("POST", "/api/generate"): SIGNED_IN,
    ("POST", "/api/chat"): SIGNED_IN,
    ("POST", "/api/embed"): SIGNED_IN,
    ("POST", "/api/embeddings"): SIGNED_IN,
    # OpenAI (web/compat/openai.py)
    ("GET", "/v1/models"): SIGNED_IN,
    ("GET", "/v1/models/<path:name>"): SIGNED_IN,
    ("POST", "/v1/chat/completions"): SIGNED_IN,
    ("POST", "/v1/completions"): SIGNED_IN,
    ("POST", "/v1/embeddings"): SIGNED_IN,
    # Prometheus (web/metrics.py)
    ("GET", "/metrics"): PUBLIC,
}
