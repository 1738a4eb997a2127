"""Every failure answers `{"error": {"code", "message", "details"}}` with the right status."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, jsonify
from flask.testing import FlaskClient
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from config.logging import build_formatter
from db.models import AuditLogEntry, Node, User
from tests.factories import TEST_PASSWORD_HASH
from web import create_app
from web.database import get_session
from web.errors import Conflict
from web.validation import load_body


class Widget(BaseModel):
    name: str = Field(min_length=1)
    size: int = Field(ge=1)


def _probe_routes() -> Blueprint:
    """Routes that exist only in these tests, to drive each error class."""
    bp = Blueprint("probe", __name__)

    @bp.post("/probe/widgets")
    def create_widget() -> Any:
        widget = load_body(Widget)
        return jsonify(widget.model_dump()), 201

    @bp.get("/probe/boom")
    def boom() -> Any:
        raise RuntimeError("cannot reach postgresql://app:hunter2@10.0.0.5/db")

    @bp.post("/probe/nodes/bad")
    def bad_node() -> Any:
        # Slips past validation to the database: a CHECK violation, i.e. a bug.
        get_session().add(Node(name="n", hostname="h", engine_url="u", slots=-1))
        return jsonify({"ok": True}), 201

    @bp.post("/probe/users/<name>/audited")
    def audited_user(name: str) -> Any:
        user = User(username=name, email=f"{name}@example.com", password_hash="x")
        get_session().add(user)
        return jsonify({"ok": True}), 201

    @bp.post("/probe/users/<name>")
    def add_user(name: str) -> Any:
        get_session().add(User(username=name, email=f"{name}@example.com", password_hash="x"))
        return jsonify({"ok": True}), 201

    @bp.post("/probe/users/<name>/then-fail")
    def add_user_then_fail(name: str) -> Any:
        get_session().add(
            User(username=name, email=f"{name}@example.com", password_hash=TEST_PASSWORD_HASH)
        )
        get_session().flush()
        raise Conflict("changed my mind")

    return bp


@pytest.fixture(scope="module")
def probe_app(settings_overrides: dict[str, Any], database: Any) -> Flask:
    app = create_app({**settings_overrides, "max_content_length": 2048})
    app.register_blueprint(_probe_routes())
    return app


@pytest.fixture
def probe(probe_app: Flask, connection: Any, session_factory: Any) -> Iterator[FlaskClient]:
    from db.session import Database

    original = probe_app.extensions["db"]
    probe_app.extensions["db"] = Database(connection.engine, session_factory, autocommit=False)
    yield probe_app.test_client()
    probe_app.extensions["db"] = original


def _assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    error = _assert_error(client.get("/no/such/route"), 404, "not_found")
    assert "/no/such/route" in error["message"]


def test_wrong_method_is_json_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/health")
    error = _assert_error(response, 405, "method_not_allowed")
    assert "GET" in error["details"]["allowed_methods"]
    assert "GET" in response.headers["Allow"]


def test_body_over_the_limit_is_json_413(probe: FlaskClient) -> None:
    response = probe.post("/probe/widgets", json={"name": "x" * 4096, "size": 1})
    _assert_error(response, 413, "payload_too_large")


def test_non_json_body_is_json_415(probe: FlaskClient) -> None:
    response = probe.post(
        "/probe/widgets", data="name=x&size=1", content_type="application/x-www-form-urlencoded"
    )
    _assert_error(response, 415, "unsupported_media_type")


def test_missing_body_without_json_type_is_415(probe: FlaskClient) -> None:
    _assert_error(probe.post("/probe/widgets"), 415, "unsupported_media_type")


def test_malformed_json_is_400(probe: FlaskClient) -> None:
    response = probe.post("/probe/widgets", data="{not json", content_type="application/json")
    _assert_error(response, 400, "invalid_json")


def test_invalid_fields_are_422_with_field_details(probe: FlaskClient) -> None:
    response = probe.post("/probe/widgets", json={"name": "", "size": 0, "extra": 1})
    error = _assert_error(response, 422, "validation_error")
    fields = {detail["field"] for detail in error["details"]}
    assert fields == {"body.name", "body.size"}
    assert all(set(detail) == {"field", "message", "type"} for detail in error["details"])


def test_valid_body_passes(probe: FlaskClient) -> None:
    response = probe.post("/probe/widgets", json={"name": "gear", "size": 3})
    assert response.status_code == 201
    assert response.get_json() == {"name": "gear", "size": 3}


def test_unexpected_error_is_500_that_reveals_nothing_and_is_logged(
    probe: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="web.errors")
    response = probe.get("/probe/boom", headers={"X-Request-ID": "trace-500"})

    error = _assert_error(response, 500, "internal_error")
    assert error["details"] == {"request_id": "trace-500"}
    assert "hunter2" not in response.get_data(as_text=True)
    assert "RuntimeError" not in response.get_data(as_text=True)
    [record] = [r for r in caplog.records if r.name == "web.errors"]
    assert record.request_id == "trace-500"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    line = json.loads(build_formatter("json").format(record))
    assert line["request_id"] == "trace-500"
    assert "RuntimeError" in line["exc_info"]
    assert "hunter2" not in json.dumps(line)


def test_unique_violation_at_commit_is_409(probe: FlaskClient, db_session: Any) -> None:
    assert probe.post("/probe/users/dupe", json={}).status_code == 201
    error = _assert_error(probe.post("/probe/users/dupe", json={}), 409, "conflict")
    assert error["details"] is None  # no schema names leak


def test_an_error_rolls_back_the_unit_of_work(probe: FlaskClient, db_session: Any) -> None:
    _assert_error(probe.post("/probe/users/ghost/then-fail", json={}), 409, "conflict")
    count = db_session.scalar(select(func.count()).where(User.username == "ghost"))
    assert count == 0


def test_success_commits_once(probe: FlaskClient, db_session: Any) -> None:
    assert probe.post("/probe/users/kept", json={}).status_code == 201
    count = db_session.scalar(select(func.count()).where(User.username == "kept"))
    assert count == 1


def test_other_integrity_errors_are_bugs_not_conflicts(probe: FlaskClient) -> None:
    _assert_error(probe.post("/probe/nodes/bad", json={}), 500, "internal_error")


def test_a_database_outage_at_commit_is_503_with_the_request_id(
    probe: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    def lost_connection(self: Session) -> None:
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(Session, "commit", lost_connection)
    response = probe.post("/probe/users/late", json={}, headers={"X-Request-ID": "outage-1"})

    error = _assert_error(response, 503, "database_unavailable")
    assert error["details"] == {"request_id": "outage-1"}


def test_web_writes_carry_ip_user_agent_and_request_id_into_the_audit_trail(
    probe: FlaskClient, db_session: Any
) -> None:
    probe.post(
        "/probe/users/traced/audited",
        json={},
        headers={"X-Request-ID": "audit-me", "User-Agent": "probe/1.0"},
        environ_base={"REMOTE_ADDR": "198.51.100.4"},
    )
    entry = db_session.scalar(select(AuditLogEntry).where(AuditLogEntry.action == "users.insert"))
    assert entry.request_id == "audit-me"
    assert entry.user_agent == "probe/1.0"
    assert str(entry.ip_address) == "198.51.100.4"
