"""GET /openapi.json and GET /docs: a valid OpenAPI 3.1 document of every route, and a docs
page that loads only our own files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import jsonschema_rs
import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from pydantic import BaseModel

# The official OpenAPI 3.1 schema (2022-10-07), as schemathesis (pinned) ships it.
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from web.openapi import documented
from web.openapi.builder import build_document
from web.openapi.links import Link, add_links, links
from web.openapi.metadata import operation_of

# The one route that may stay undescribed: Flask's own static route.
UNDESCRIBED_ENDPOINTS = ("static",)


@pytest.fixture(scope="module")
def document(base_app: Flask) -> dict[str, Any]:
    return build_document(base_app)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    errors = [str(error) for error in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []


def test_every_schema_is_valid_json_schema_and_every_ref_resolves(
    document: dict[str, Any],
) -> None:
    components = document["components"]["schemas"]
    for name, schema in components.items():
        jsonschema_rs.meta.validate(schema)  # raises, naming the problem
        assert name.replace("_", "").isalnum(), name
    for node in _walk(document):
        reference = node.get("$ref")
        if isinstance(reference, str):
            assert reference.startswith("#/components/schemas/"), reference
            assert reference.removeprefix("#/components/schemas/") in components, reference


def test_every_route_of_the_url_map_is_in_the_document(
    base_app: Flask, document: dict[str, Any]
) -> None:
    expected = set()
    for rule in base_app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([a-zA-Z_][a-zA-Z0-9_]*)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            expected.add((path, method.lower()))
    listed = {(path, method) for path, method, _ in _operations(document)}
    assert listed == expected
    operation_ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert len(operation_ids) == len(set(operation_ids))


def test_every_link_joins_two_operations_of_the_app(document: dict[str, Any]) -> None:
    """add_links skips a link whose ends an app lacks (apps built from a few blueprints); the
    app itself has every end, so a renamed endpoint cannot drop links silently."""
    operation_ids = {operation["operationId"] for _, _, operation in _operations(document)}
    for link in links():
        assert {link.source, link.target} <= operation_ids, link
    written = [
        (operation["operationId"], status, name, link)
        for _, _, operation in _operations(document)
        for status, answer in operation["responses"].items()
        for name, link in answer.get("links", {}).items()
    ]
    assert len(written) == len(links())
    submitted = document["paths"]["/api/v1/inference/generate"]["post"]["responses"]["202"]
    assert submitted["links"]["ReadRequest"] == {
        "operationId": "inference_read_request",
        "description": "The job: its state, output and metrics.",
        "parameters": {"path.request_id": "$response.body#/id"},
    }
    for _, status, name, link in written:
        assert status.startswith("2"), name
        assert link["operationId"] in operation_ids


def test_every_route_can_be_refused_by_the_http_server(document: dict[str, Any]) -> None:
    """gunicorn answers a request it cannot parse (a bad Content-Length, a malformed header)
    with its own HTML 400 page, whatever the route; next to the route's own JSON 400."""
    for path, method, operation in _operations(document):
        if path == "/static/{filename}":
            continue  # undescribed: a `default` answer
        refused = operation["responses"]["400"]
        assert "text/html" in refused["content"], (method, path)
        assert "gunicorn" in refused["description"], (method, path)
    generate = document["paths"]["/api/v1/inference/generate"]["post"]["responses"]["400"]
    assert set(generate["content"]) == {"application/json", "text/html"}
    assert set(document["paths"]["/health"]["get"]["responses"]) == {"200", "400"}


def test_a_link_that_does_not_fit_its_operations_is_refused() -> None:
    paths = {
        "/a": {"post": {"operationId": "a", "responses": {"201": {"description": "Created"}}}},
        "/b/{id}": {"get": {"operationId": "b", "responses": {"200": {"description": "OK"}}}},
    }
    with pytest.raises(ValueError, match="never answers 200"):
        add_links(paths, [Link("a", 200, "B", "b", "b", {"path.id": "$response.body#/id"})])
    with pytest.raises(ValueError, match="has no other"):
        add_links(paths, [Link("a", 201, "B", "b", "b", {"path.other": "$response.body#/id"})])
    add_links(paths, [Link("a", 201, "B", "b", "b", {"path.id": "$response.body#/id"})])
    add_links(paths, [Link("a", 201, "C", "c", "an operation this app lacks")])
    assert list(paths["/a"]["post"]["responses"]["201"]["links"]) == ["B"]


def test_path_parameters_say_what_the_converter_accepts(document: dict[str, Any]) -> None:
    [parameter] = document["paths"]["/api/v1/inference/requests/{request_id}"]["get"]["parameters"]
    assert parameter == {
        "name": "request_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }


def test_every_route_is_described(base_app: Flask) -> None:
    undescribed = sorted(
        rule.rule
        for rule in base_app.url_map.iter_rules()
        if rule.endpoint not in UNDESCRIBED_ENDPOINTS
        and operation_of(base_app.view_functions[rule.endpoint]) is None
    )
    assert undescribed == []


def test_undescribed_routes_are_listed_with_a_default_answer(document: dict[str, Any]) -> None:
    static = document["paths"]["/static/{filename}"]["get"]
    assert static["responses"] == {"default": {"description": "Not described yet."}}
    assert static["parameters"][0]["name"] == "filename"


def test_security_follows_the_guard(document: dict[str, Any]) -> None:
    signed_in = [{"accessToken": []}, {"apiKey": []}]
    profile = document["paths"]["/api/v1/users/profile"]["get"]
    assert profile["security"] == signed_in
    assert profile["x-permission"] == "profile"
    assert {"401", "403", "429"} <= set(profile["responses"])
    for path in ("/health", "/health/ready", "/openapi.json", "/docs", "/api/v1/auth/register"):
        operation = next(iter(document["paths"][path].values()))
        assert operation["security"] == [], path
        assert "401" not in operation["responses"], path
    assert document["paths"]["/api/v1/auth/refresh"]["post"]["security"] == [{"refreshToken": []}]
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["queryToken"]["in"] == "query"


def test_errors_each_route_can_give_are_documented_with_the_error_object(
    document: dict[str, Any],
) -> None:
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    invalid = {"$ref": "#/components/schemas/ValidationErrorResponse"}
    chat = document["paths"]["/api/v1/inference/chat"]["post"]
    assert {"202", "200", "400", "401", "403", "409", "413", "415", "422", "429"} <= set(
        chat["responses"]
    )
    assert chat["responses"]["409"]["content"]["application/json"]["schema"] == error
    assert chat["responses"]["422"]["content"]["application/json"]["schema"] == invalid
    assert "Idempotency-Key" in [parameter["name"] for parameter in chat["parameters"]]
    detail = document["paths"]["/api/v1/models/{model_id}"]["get"]["responses"]
    assert detail["404"]["content"]["application/json"]["schema"] == error
    assert "415" not in detail
    assert "422" not in detail
    assert detail["414"] == {"description": detail["414"]["description"]}  # not our body
    assert "429" not in document["paths"]["/health"]["get"]["responses"]  # exempt


def test_bodies_use_the_validation_schema_and_answers_the_serialization_one(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    # RequestRead reads model_name from the row and sends it as "model".
    assert "model" in schemas["RequestRead"]["properties"]
    assert "model_name" not in schemas["RequestRead"]["properties"]
    # A computed field exists only in what we send.
    assert "gpu_memory_used_bytes" in schemas["NodeRead"]["properties"]
    body = document["paths"]["/api/v1/inference/generate"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerateRequest"
    }


def test_query_models_become_one_parameter_per_field(document: dict[str, Any]) -> None:
    parameters = {
        parameter["name"]: parameter
        for parameter in document["paths"]["/api/v1/system/audit"]["get"]["parameters"]
    }
    assert set(parameters) >= {"page", "per_page", "user_id", "action", "since", "until"}
    # Optional fields are parameters one leaves out: no null in a query string.
    assert parameters["user_id"]["schema"] == {"type": "string", "format": "uuid"}
    assert parameters["user_id"]["required"] is False


def test_websockets_are_listed_as_their_handshake(document: dict[str, Any]) -> None:
    stream = document["paths"]["/ws/inference/{request_id}"]["get"]
    # 503: the caller is resolved, in the database, before the upgrade.
    assert set(stream["responses"]) == {"101", "400", "404", "414", "429", "503"}
    assert {"queryToken": []} in stream["security"]
    assert "1008" in stream["x-websocket"]["close_codes"]
    assert "after" in [parameter["name"] for parameter in stream["parameters"]]


def test_every_route_that_reads_the_database_documents_its_absence(
    document: dict[str, Any],
) -> None:
    """A credential is resolved in the database, and every body is stored there."""
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if operation.get("security") or "requestBody" in operation:
                why = operation["responses"]["503"]["description"]
                assert "database_unavailable" in why, (method, path)
    probes = document["paths"]["/health"]["get"]["responses"]
    assert "503" not in probes


def test_the_decorator_only_records(base_app: Flask) -> None:
    def view() -> str:
        """What it does."""
        return "unchanged"

    assert documented("Summary")(view) is view
    assert view() == "unchanged"
    operation = operation_of(view)
    assert operation is not None
    assert operation.description == "What it does."
    with pytest.raises(TypeError):
        documented("Bad", responses={404: dict})


def test_a_front_door_can_name_its_own_error_body_and_drop_implied_errors() -> None:
    class OllamaError(BaseModel):
        error: str

    bp = Blueprint("door", __name__)

    @bp.post("/door/<uuid:thing>")
    @documented(
        "A front door",
        body=OllamaError,
        responses={200: OllamaError, 422: None, 400: "Bad input."},
        error_body=OllamaError,
    )
    def door(thing: str) -> str:
        return thing

    app = Flask(__name__)
    app.register_blueprint(bp)
    responses = build_document(app)["paths"]["/door/{thing}"]["post"]["responses"]
    assert "422" not in responses
    own = {"$ref": "#/components/schemas/OllamaError"}
    assert responses["400"]["content"]["application/json"]["schema"] == own
    assert responses["404"]["content"]["application/json"]["schema"] == own
    assert responses["400"]["description"].startswith("Bad input.")


def test_openapi_json_is_public_and_built_once(client: FlaskClient, base_app: Flask) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json()["openapi"] == "3.1.0"
    cached = base_app.extensions["openapi_json"]
    assert client.get("/openapi.json").get_data(as_text=True) is not None
    assert base_app.extensions["openapi_json"] is cached


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.spec_url: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href"):
            if found.get(name):
                self.urls.append(str(found[name]))
        if found.get("data-spec-url"):
            self.spec_url = found["data-spec-url"]


def test_docs_page_loads_only_local_files(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    links = _Links()
    links.feed(response.get_data(as_text=True))
    assert links.spec_url == "/openapi.json"
    kinds = {}
    assert len(links.urls) == 4
    for url in links.urls:
        assert url.startswith("/docs/assets/"), url  # ours, never a CDN
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.get_data()) > 0
        kinds[url.rsplit(".", 1)[1]] = asset.mimetype
    assert kinds == {"css": "text/css", "js": "text/javascript", "png": "image/png"}
    assert b"SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").get_data()


def test_only_the_files_the_page_uses_are_served(client: FlaskClient) -> None:
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/docs/assets/..%2F__init__.py").status_code == 404
