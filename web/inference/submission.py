"""Accepting a job: validate, check the model, persist, then (after commit) publish.

The row is the source of truth: it is committed before anything reaches the broker, so
a job is never lost when the broker is down (the outbox sweeper publishes it later), and
a publish never points at a row that was rolled back.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import timedelta
from typing import Literal

from flask import Response, current_app, jsonify, request, url_for
from sqlalchemy.exc import IntegrityError

from db.fleet import availability, canonical_model_name
from db.inference import cancel as cancel_job
from db.inference import find_by_idempotency_key
from db.models import InferenceRequest, RequestKind, RequestStatus
from web.database import after_commit, get_session
from web.errors import BadRequest, Conflict
from web.extensions import current_config, current_settings
from web.inference.dispatch_marks import DispatchMarks
from web.schemas.inference import ChatRequest, GenerateRequest, Links, Submitted
from web.security.principal import authenticated
from workers.celery_app import celery_app
from workers.dispatch import dispatch
from workers.events import EventLog
from workers.metrics import INFERENCE_REQUESTS
from workers.runtime import cancel_key

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _events() -> EventLog:
    events: EventLog = current_app.extensions["events"]
    return events


def _answer(row: InferenceRequest, status_code: int) -> tuple[Response, int]:
    body = Submitted(
        id=row.id,
        status=row.status,
        links=Links(
            self=url_for("inference.read_request", request_id=row.id), ws=f"/ws/inference/{row.id}"
        ),
    )
    return jsonify(body.model_dump(mode="json")), status_code


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise BadRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters.",
            code="invalid_idempotency_key",
        )
    return key


def _replay(existing: InferenceRequest, request_hash: str) -> InferenceRequest:
    if existing.request_hash != request_hash:
        raise Conflict(
            "This Idempotency-Key was used with a different request.", code="idempotency_conflict"
        )
    return existing


def submit(kind: RequestKind, body: GenerateRequest | ChatRequest) -> tuple[Response, int]:
    row, created = accept(kind, body)
    return _answer(row, 202 if created else 200)


def accept(
    kind: RequestKind, body: GenerateRequest | ChatRequest, source: str = "api"
) -> tuple[InferenceRequest, bool]:
    """Validate, persist (flushed; committed with the request) and dispatch after commit.
    Returns the row and whether it is new (False: an idempotent replay)."""
    principal = authenticated()
    settings = current_settings()
    session = get_session()
    model_name = canonical_model_name(body.model)
    fields = body.model_dump(
        mode="json", exclude_none=True, exclude={"model", "options", "priority"}
    )
    request_hash = hashlib.sha256(
        json.dumps(
            {
                "kind": kind,
                "model": model_name,
                "priority": body.priority,
                "options": body.options,
                **fields,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()

    key = _idempotency_key()
    if key is not None:
        existing = find_by_idempotency_key(session=session, user_id=principal.user_id, key=key)
        if existing is not None:
            return _replay(existing, request_hash), False

    served = availability(
        session=session,
        model_name=model_name,
        stale_after=timedelta(seconds=settings.node_stale_after_s),
    )
    if served.disabled:
        raise Conflict(f"Model {model_name} is disabled.", code="model_disabled")
    config = current_config()
    if not served.served and not config.queue_while_unavailable:
        raise Conflict(
            f"No online node serves {model_name}.",
            code="model_unavailable",
            details={"model": model_name},
        )

    row = InferenceRequest(
        id=uuid.uuid4(),
        user_id=principal.user_id,
        model_name=model_name,
        model_id=served.model_id,
        kind=kind,
        source=source,
        input=fields,
        options=body.options or {},
        priority=config.default_priority if body.priority is None else body.priority,
        idempotency_key=key,
        request_hash=request_hash,
        status=RequestStatus.QUEUED,
        attempt=1,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # The same key arrived twice at once and the other one won: answer as a replay.
        session.rollback()
        existing = find_by_idempotency_key(
            session=session, user_id=principal.user_id, key=key or ""
        )
        if existing is None:
            raise
        return _replay(existing, request_hash), False

    request_id, priority, owner = row.id, row.priority, row.user_id
    label = _model_label(row)
    after_commit(lambda: _announce_and_dispatch(request_id, owner, model_name, priority, label))
    return row, True


def _model_label(row: InferenceRequest) -> str:
    """The request's model as a metric label: only registered names, so a job queued for a
    typo (QUEUE_WHILE_UNAVAILABLE) cannot add a series."""
    return row.model_name if row.model_id else "<unregistered>"


def _announce_and_dispatch(
    request_id: uuid.UUID, owner: uuid.UUID | None, model_name: str, priority: int, label: str
) -> None:
    _events().publish(request_id, "status", status="queued", attempt=1, user_id=owner)
    INFERENCE_REQUESTS.labels("queued", label).inc()
    if dispatch(request_id, model_name, priority):
        marks: DispatchMarks = current_app.extensions["dispatch_marks"]
        marks.add(request_id)


def cancel(row: InferenceRequest) -> Literal["cancelled", "cancelling"]:
    """Cancel a queued job outright, or ask the worker running it to stop. Returns the
    status the caller will see: `cancelled` now, or `cancelling` until the worker acts."""
    request_id, attempt, owner, model = row.id, row.attempt, row.user_id, _model_label(row)
    status = cancel_job(session=get_session(), request_id=request_id)
    if status is None:
        raise Conflict("The request has already ended.", code="request_ended")
    after_commit(lambda: _after_cancel(request_id, status, attempt, owner, model))
    return "cancelled" if status == RequestStatus.CANCELLED else "cancelling"


def abandon(request_id: uuid.UUID) -> None:
    """Cancel a job whose caller went away (a closed HTTP stream), outside any request's
    unit of work: the streaming response outlives it."""
    database = current_app.extensions["db"]
    with database.unit_of_work() as session:
        row = session.get(InferenceRequest, request_id)
        if row is None:
            return
        attempt, owner, model = row.attempt, row.user_id, _model_label(row)
        status = cancel_job(session=session, request_id=request_id)
    if status is not None:
        _after_cancel(request_id, status, attempt, owner, model)


def _after_cancel(
    request_id: uuid.UUID, status: str, attempt: int, owner: uuid.UUID | None, label: str
) -> None:
    """Once the cancel is committed: a queued job is over (announce it; its message is
    revoked, and the claim would refuse it anyway); a running one's worker is told to stop.
    The row records the request too, so a cancel survives a lost Redis write or a requeue."""
    if status == RequestStatus.CANCELLED:
        _events().publish(request_id, "status", status="cancelled", attempt=attempt, user_id=owner)
        INFERENCE_REQUESTS.labels("cancelled", label).inc()  # no worker will count this one
        celery_app.control.revoke(str(request_id))
    else:
        _events().redis.set(cancel_key(request_id), 1, ex=current_settings().event_ttl_s)
