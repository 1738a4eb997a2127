"""The ways a caller proves who they are, as OpenAPI security schemes (docs/security.md).

Access tokens and API keys travel the same way (`Authorization: Bearer ...`; a key is told
apart by its `omx_` prefix), so they are two bearer schemes: a client picks either.
"""

from __future__ import annotations

from typing import Any

# Names of security schemes, not secrets.
ACCESS_TOKEN = "accessToken"  # noqa: S105
API_KEY = "apiKey"
REFRESH_TOKEN = "refreshToken"  # noqa: S105
QUERY_TOKEN = "queryToken"  # noqa: S105
METRICS_TOKEN = "metricsToken"  # noqa: S105

# What a route guarded by web.security.principal.require accepts.
SIGNED_IN = (ACCESS_TOKEN, API_KEY)
# WebSockets also take the credential as ?token= (browsers cannot set headers there).
SOCKET = (ACCESS_TOKEN, API_KEY, QUERY_TOKEN)
PUBLIC: tuple[str, ...] = ()

SCHEMES: dict[str, dict[str, Any]] = {
    ACCESS_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The access_token from POST /api/v1/auth/login or /auth/refresh "
        "(lives ACCESS_TOKEN_TTL_S, 15 minutes by default). Grants the role's permissions.",
    },
    API_KEY: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "omx_<prefix>_<secret>",
        "description": "An API key from POST /api/v1/users/api-keys, sent the same way: "
        "`Authorization: Bearer omx_...`. Its scopes narrow its owner's permissions.",
    },
    REFRESH_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The refresh_token from login; accepted by POST /api/v1/auth/refresh "
        "only, and spent there (rotation).",
    },
    METRICS_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": "GET /metrics only: the METRICS_TOKEN setting, when it is set.",
    },
    QUERY_TOKEN: {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "WebSockets only: an access token or API key as ?token=, for clients "
        "that cannot set headers (browsers).",
    },
}
