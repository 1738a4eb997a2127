"""The OpenAPI 3.1 document (GET /openapi.json) and its human view (GET /docs).

Views describe themselves with `@documented` (metadata.py); builder.py walks the app's URL map
and writes the document from those records and the pydantic schemas; views.py serves it.
"""

from web.openapi.metadata import Header, Reply, documented
from web.openapi.security import (
    ACCESS_TOKEN,
    API_KEY,
    METRICS_TOKEN,
    PUBLIC,
    QUERY_TOKEN,
    REFRESH_TOKEN,
    SOCKET,
)

__all__ = [
    "ACCESS_TOKEN",
    "API_KEY",
    "METRICS_TOKEN",
    "PUBLIC",
    "QUERY_TOKEN",
    "REFRESH_TOKEN",
    "SOCKET",
    "Header",
    "Reply",
    "documented",
]
