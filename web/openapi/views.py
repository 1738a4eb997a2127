"""GET /openapi.json (the document) and GET /docs (Swagger UI), both public.

Swagger UI comes from the pinned PyPI package swagger-ui-bundle and is served from here, never
from a CDN: the docs work offline, and the page loads no code we did not pin. Only the files the
page uses are served (the `any` converter lists them; anything else is a 404).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from string import Template
from typing import Any

from flask import Blueprint, Flask, Response, current_app, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path

from web.openapi.builder import build_document
from web.openapi.metadata import Reply, documented
from web.openapi.security import PUBLIC

bp = Blueprint("openapi", __name__)

BUNDLE = Path(str(swagger_ui_path))
OURS = Path(__file__).parent / "static"
# name -> (folder, media type). Media types are fixed here rather than guessed from the
# system's mime.types: with X-Content-Type-Options: nosniff a wrong one breaks the page.
ASSETS = {
    "swagger-ui.css": (BUNDLE, "text/css"),
    "swagger-ui-bundle.js": (BUNDLE, "text/javascript"),
    "favicon-32x32.png": (BUNDLE, "image/png"),
    "docs.js": (OURS, "text/javascript"),
}
ASSET_MAX_AGE_S = 3600
# Swagger UI sets inline style attributes and uses data: images in its CSS; no inline script.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>OllamaMax API</title>
  <link rel="stylesheet" href="$css">
  <link rel="icon" type="image/png" href="$icon">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="$bundle"></script>
  <script src="$init" data-spec-url="$spec"></script>
</body>
</html>
"""
)
_build_lock = threading.Lock()


def document_json(app: Flask) -> str:
    """The document as JSON text, built on first use and kept: every route is registered by
    then, and the URL map does not change while the app runs."""
    cached: str | None = app.extensions.get("openapi_json")
    if cached is None:
        with _build_lock:
            cached = app.extensions.get("openapi_json")
            if cached is None:
                cached = json.dumps(build_document(app), separators=(",", ":"))
                app.extensions["openapi_json"] = cached
    return cached


@bp.get("/openapi.json")
@documented(
    "This document (OpenAPI 3.1)",
    responses={200: dict[str, Any]},
    security=PUBLIC,
)
def document() -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return Response(document_json(app), mimetype="application/json")


@bp.get("/docs")
@documented(
    "The API documentation for humans (Swagger UI)",
    responses={200: Reply(media_types=("text/html",))},
    security=PUBLIC,
)
def docs() -> Response:
    def asset(name: str) -> str:
        return url_for("openapi.asset", name=name)

    page = PAGE.substitute(
        css=asset("swagger-ui.css"),
        icon=asset("favicon-32x32.png"),
        bundle=asset("swagger-ui-bundle.js"),
        init=asset("docs.js"),
        spec=url_for("openapi.document"),
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@bp.get("/docs/assets/<any(" + ", ".join(repr(name) for name in ASSETS) + "):name>")
@documented(
    "A file of the documentation page",
    responses={200: Reply(media_types=tuple(sorted({kind for _, kind in ASSETS.values()})))},
    security=PUBLIC,
)
def asset(name: str) -> Response:
    folder, media_type = ASSETS[name]
    return send_from_directory(folder, name, mimetype=media_type, max_age=ASSET_MAX_AGE_S)
