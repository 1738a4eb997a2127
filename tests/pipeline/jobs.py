"""Submitting jobs and watching them from tests, through the public API (or, for what the
API would refuse, straight into the database)."""

from __future__ import annotations

import uuid
from typing import Any

from flask.testing import FlaskClient

from db.models import InferenceRequest
from db.session import Database
from tests.pipeline.conftest import wait_for
from workers.events import EventLog

TERMINAL = {"completed", "failed", "cancelled"}


def submit(
    api: FlaskClient, headers: dict[str, str], kind: str = "generate", **body: Any
) -> dict[str, Any]:
    payload = {"model": "llama3.2", "prompt": "why is the sky blue?", **body}
    if kind == "chat":
        payload.pop("prompt")
        payload.setdefault("messages", [{"role": "user", "content": "hello there"}])
    response = api.post(f"/api/v1/inference/{kind}", json=payload, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def read(api: FlaskClient, headers: dict[str, str], request_id: str) -> dict[str, Any]:
    return api.get(f"/api/v1/inference/requests/{request_id}", headers=headers).get_json()  # type: ignore[no-any-return]


def wait_status(
    api: FlaskClient,
    headers: dict[str, str],
    request_id: str,
    statuses: set[str],
    timeout: float = 20.0,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = read(api, headers, request_id)
        assert "status" in body, body
        return body if body["status"] in statuses else None

    return wait_for(reached, timeout=timeout)  # type: ignore[no-any-return]


def finished(
    api: FlaskClient, headers: dict[str, str], request_id: str, timeout: float = 20.0
) -> dict[str, Any]:
    return wait_status(api, headers, request_id, TERMINAL, timeout)


def events_of(api: FlaskClient, request_id: str) -> list[dict[str, Any]]:
    events: EventLog = api.application.extensions["events"]
    return events.replay(request_id)


def tokens_seen(api: FlaskClient, request_id: str) -> str:
    return "".join(e["text"] for e in events_of(api, request_id) if e["type"] == "token")


def store_queued(
    database: Database,
    owner: str,
    input_: dict[str, Any],
    options: dict[str, Any] | None = None,
    **fields: Any,
) -> uuid.UUID:
    """A queued generate job written straight to the database, as if the API had accepted
    it (for input the API would refuse, or a worker driven by hand)."""
    with database.unit_of_work() as session:
        row = InferenceRequest(
            id=uuid.uuid4(),
            user_id=uuid.UUID(owner),
            model_name="llama3.2:latest",
            kind="generate",
            input=input_,
            options=options or {},
            status="queued",
            **fields,
        )
        session.add(row)
    return row.id
