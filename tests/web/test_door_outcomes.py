"""The doors' follower when a job's last events never arrive (web/compat/jobs.py
`outcomes`): its worker died after storing the result, or Redis was away and the events
wait in the worker's backlog. After a quiet spell the database has the last word, and the
caller still gets the whole answer: the text not yet sent, then the end; or, when what was
sent belonged to a voided attempt, a restart and the stored text. Real Redis (the app's
relay) and PostgreSQL (the test's transaction)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from db.models import RequestStatus
from tests.factories import InferenceRequestFactory, UserFactory
from web.compat.jobs import outcomes
from workers.events import EventLog


@pytest.fixture
def door_app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory(ws_heartbeat_s=0.05)  # quiet periods come quickly


def _stored(db_session: Session, output: str, status: str = RequestStatus.COMPLETED) -> uuid.UUID:
    row = InferenceRequestFactory(user_id=UserFactory().id, status=status, output=output)
    db_session.flush()
    return row.id  # type: ignore[no-any-return]


def _outcomes(app: Flask, request_id: uuid.UUID) -> list[tuple[str, Any]]:
    with app.test_request_context():
        return [item for item in outcomes(request_id) if item[0] != "idle"]


def _published(app: Flask, request_id: uuid.UUID, *texts: str, attempt: int = 1) -> None:
    events: EventLog = app.extensions["events"]
    events.publish(request_id, "status", status="running", attempt=attempt)
    for text in texts:
        events.publish(request_id, "token", text=text, attempt=attempt)


def test_the_text_not_yet_sent_comes_from_the_stored_result(
    door_app: Flask, db_session: Session
) -> None:
    request_id = _stored(db_session, output="one two three")
    _published(door_app, request_id, "one", " two")  # " three" and the end never arrive

    got = _outcomes(door_app, request_id)

    assert got[:3] == [("token", "one"), ("token", " two"), ("token", " three")]
    assert got[-1][0] == "done"
    assert len(got) == 4


def test_nothing_is_sent_twice_when_every_token_arrived(
    door_app: Flask, db_session: Session
) -> None:
    request_id = _stored(db_session, output="one two")
    _published(door_app, request_id, "one", " two")

    assert [kind for kind, _ in _outcomes(door_app, request_id)] == ["token", "token", "done"]


def test_text_of_a_voided_attempt_is_withdrawn_before_the_stored_answer(
    door_app: Flask, db_session: Session
) -> None:
    # Attempt 1 streamed "abandoned"; the job was requeued and finished as "kept", and
    # neither the restart nor attempt 2's events reached this reader.
    request_id = _stored(db_session, output="kept")
    _published(door_app, request_id, "abandoned")

    got = _outcomes(door_app, request_id)

    assert [kind for kind, _ in got] == ["token", "restarted", "token", "done"]
    assert got[2] == ("token", "kept")


def test_a_job_stored_as_failed_ends_with_its_error(door_app: Flask, db_session: Session) -> None:
    request_id = _stored(db_session, output="part", status=RequestStatus.FAILED)
    _published(door_app, request_id, "part")

    assert _outcomes(door_app, request_id)[-1][0] == "error"
