"""Jobs as callers see them, whatever door they came in by: accept (persist, then publish),
cancel, abandon, and who may see which job. The REST views, the WebSocket relay and the
Ollama and OpenAI doors all call these; none of them talks to the broker or the event log
about jobs itself.

Accepting costs one statement in autocommit, one round trip (admit() checks the model and
the quotas, inserts, and marks the job dispatched; db/inference.py) and two Redis commands
(the "queued" event, the publish).
The row is committed before anything reaches the broker, so a job is never lost when the
broker is down (the outbox sweeper publishes it later), and a publish never points at a
row that was rolled back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from flask import current_app, request
from redis.exceptions import RedisError

from db.fleet import availability, canonical_model_name
from db.inference import NewRequest, find_by_idempotency_key, insert_if_servable, standing
from db.inference import cancel as cancel_job
from db.models import TERMINAL_STATUSES, InferenceRequest, RequestKind, RequestStatus
from db.recovery import undo_dispatch
from db.session import Database
from web.database import after_commit, end_unit_of_work, get_db, get_session
from web.errors import BadRequest, Conflict, NotFound
from web.extensions import current_celery, current_runtime_config, current_settings
from web.inference import quotas
from web.inference.policy import police
from web.schemas.inference import ChatRequest, EmbedRequest, GenerateRequest, RequestRead
from web.security.policy import Permission
from web.security.principal import Principal, authenticated
from web.webhooks.guard import checked_webhook
from workers.dispatch import publish_inference
from workers.events import EventLog
from workers.metrics import INFERENCE_REQUESTS
from workers.watch import cancel_key

log = logging.getLogger(__name__)

WEBHOOK_HEADER = "X-OllamaMax-Webhook"
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
Submission = GenerateRequest | ChatRequest | EmbedRequest


@dataclass(frozen=True)
class Accepted:
    id: uuid.UUID
    status: str
    created: bool  # False: the job an earlier call with the same Idempotency-Key created


def _events() -> EventLog:
    events: EventLog = current_app.extensions["events"]
    return events


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise BadRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters.",
            code="invalid_idempotency_key",
        )
    return key


def webhook_url(body: Submission, principal: Principal) -> str | None:
    """Where the job's end is POSTed: the body's `webhook_url`, else the WEBHOOK_HEADER
    header (every door), else the API key's default. A URL given with the job is checked
    here (400, in the door's shape): http(s), no credentials, no internal address. The key's
    default was checked when it was set; every URL is checked again at delivery."""
    given = getattr(body, "webhook_url", None) or request.headers.get(WEBHOOK_HEADER)
    return principal.key_webhook_url if given is None else checked_webhook(given)


def _request_hash(kind: RequestKind, model: str, body: Submission, fields: dict[str, Any]) -> str:
    """What an Idempotency-Key promises: the same key again means the same request."""
    described = {"kind": kind, "model": model, "priority": body.priority, "options": body.options}
    return hashlib.sha256(json.dumps({**described, **fields}, sort_keys=True).encode()).hexdigest()


def accept(kind: RequestKind, body: Submission, source: str = "api") -> Accepted:
    """Persist the job (committed here, in its own one-statement transaction: the request's
    other work, such as resolving its caller, does not hold it back), then announce and
    publish it."""
    principal = authenticated()
    settings = current_settings()
    config = current_runtime_config()
    model_name = canonical_model_name(body.model)
    fields = body.model_dump(
        mode="json",
        exclude_none=True,
        exclude={"model", "options", "priority", "webhook_url"},
    )
    # The engine-option policy (web/inference/policy.py): stored clamped, or refused (400).
    # The Idempotency-Key's hash stays that of the request as sent.
    policed = police(body, principal.role, config, key_ceiling=quotas.max_priority(principal))
    stored = {k: v for k, v in fields.items() if k != "keep_alive"}
    if policed.keep_alive is not None:
        stored["keep_alive"] = policed.keep_alive
    mine, key = quotas.caller_limits(principal, config)
    new = NewRequest(
        id=uuid.uuid4(),
        user_id=principal.user_id,
        model_name=model_name,
        kind=kind,
        source=source,
        input=stored,
        options=policed.options,
        priority=policed.priority,
        idempotency_key=idempotency_key(),
        request_hash=_request_hash(kind, model_name, body, fields),
        api_key_id=principal.api_key_id,
        running_cap=mine.max_running_jobs,
        key_running_cap=key.max_running_jobs,
        webhook_url=webhook_url(body, principal),
    )
    # Whatever the request read or wrote so far (a caller resolved from the database) is
    # committed first, so that a request never holds two pooled connections at once.
    end_unit_of_work()
    database = get_db()
    stale_after = timedelta(seconds=settings.node_stale_after_s)
    # A second try only when nothing explained the first refusal (a quota freed meanwhile).
    for _ in range(2):
        # The insert is one statement (a call of admit()), the whole transaction: sent in
        # autocommit, one round trip instead of three (BEGIN, the call, COMMIT).
        with database.one_call() as connection:
            inserted = insert_if_servable(
                executor=connection,
                new=new,
                stale_after=stale_after,
                queue_while_unavailable=config.queue_while_unavailable,
                admission=quotas.admission(principal, config),
            )
        if inserted is not None:
            _announce_and_publish(database, new, registered=inserted.model_id is not None)
            return Accepted(new.id, RequestStatus.QUEUED, created=True)
        replayed = _not_inserted(database, principal, new, stale_after)
        if replayed is not None:
            return replayed
    raise Conflict("The request could not be queued; try again.", code="not_queued")


def _not_inserted(
    database: Database, principal: Principal, new: NewRequest, stale_after: timedelta
) -> Accepted | None:
    """Why the insert took nothing: this Idempotency-Key already names a job (a replay, or
    a conflict if the request differs), a quota is reached (429), or the model refuses new
    jobs (409). None: none of these holds now (a quota freed since), worth one more try."""
    with database.unit_of_work() as session:
        if new.idempotency_key is not None:
            existing = find_by_idempotency_key(
                session=session, user_id=principal.user_id, key=new.idempotency_key
            )
            if existing is not None:
                if existing.request_hash != new.request_hash:
                    raise Conflict(
                        "This Idempotency-Key was used with a different request.",
                        code="idempotency_conflict",
                    )
                return Accepted(existing.id, existing.status, created=False)
        quotas.refuse_if_over(session=session, principal=principal, config=current_runtime_config())
        served = availability(session=session, model_name=new.model_name, stale_after=stale_after)
    if served.disabled:
        raise Conflict(f"Model {new.model_name} is disabled.", code="model_disabled")
    if served.served or current_runtime_config().queue_while_unavailable:
        return None
    raise Conflict(
        f"No online node serves {new.model_name}.",
        code="model_unavailable",
        details={"model": new.model_name},
    )


def _announce_and_publish(database: Database, new: NewRequest, *, registered: bool) -> None:
    """The job is committed: from here on nothing may fail the answer (the caller would
    retry and create it twice). A lost "queued" event costs readers nothing they need (the
    worker's events follow); a failed publish is left to the outbox sweeper."""
    try:
        _events().publish(new.id, "status", status="queued", attempt=1, user_id=new.user_id)
    except RedisError as error:
        log.warning("request %s: could not announce it queued: %s", new.id, error)
    # Only registered names as a metric label: a job queued for a typo adds no series.
    INFERENCE_REQUESTS.labels("queued", new.model_name if registered else "<unregistered>").inc()
    if not publish_inference(current_celery(), new.id, new.model_name, new.priority):
        # The insert marked it dispatched; unmark it so the outbox sweeper publishes it.
        with database.unit_of_work() as session:
            undo_dispatch(session=session, request_id=new.id)


def visible_request(request_id: uuid.UUID) -> InferenceRequest:
    """The request if the caller may see it; 404 otherwise (ids cannot be probed)."""
    row = get_session().get(InferenceRequest, request_id)
    principal = authenticated()
    if row is None or (
        row.user_id != principal.user_id and not principal.can(Permission.INFERENCE_READ_ALL)
    ):
        raise NotFound("No such request.")
    return row


def followed_request_finished(request_id: uuid.UUID) -> bool:
    """For a socket's handshake: 404 as `visible_request` answers it, else whether the
    request has finished.

    The request's own events answer both in one Redis command when the first one stored is
    a status event (accept()'s "queued", unless its publish failed): every status event
    names the owner, and a terminal status is published only once the row has ended.
    Otherwise (the events expired, or were trimmed down to text; Redis is away) the
    database does, with two columns read in autocommit: one round trip. Events that lack a
    job's end (its worker died between saving the result and announcing it; Redis lost the
    announcement) say "not finished": the stream then ends from the database after a few
    quiet heartbeats (web/realtime/streams.py), as a socket already open did all along,
    where the database would have answered at once."""
    principal = authenticated()
    # A caller read from the database holds a pooled connection: not across a Redis call,
    # and never two at once.
    end_unit_of_work()
    known = _standing_from_events(request_id)
    if known is None:
        with get_db().one_call() as connection:
            found = standing(executor=connection, request_id=request_id)
        if found is not None:
            known = (found.owner, found.status in TERMINAL_STATUSES)
    if known is None or (
        known[0] != principal.user_id and not principal.can(Permission.INFERENCE_READ_ALL)
    ):
        raise NotFound("No such request.")
    return known[1]


def _standing_from_events(request_id: uuid.UUID) -> tuple[uuid.UUID | None, bool] | None:
    """(owner, finished) from the request's stored events, or None when they cannot tell."""
    try:
        ends = _events().ends(request_id)
    except RedisError as error:
        log.warning("request %s: events unreadable, asking the database: %s", request_id, error)
        return None
    if ends is None:
        return None
    first, last = ends
    owner = first.get("user_id")
    if first.get("type") != "status" or not isinstance(owner, str):
        return None
    finished = last.get("type") == "status" and last.get("status") in TERMINAL_STATUSES
    return uuid.UUID(owner), finished


def final_state(request_id: uuid.UUID) -> dict[str, Any] | None:
    """The request as the REST API shows it, if it has finished. One statement in
    autocommit: a socket's last frame costs one round trip, not three."""
    with get_db().one_statement() as session:
        row = session.get(InferenceRequest, request_id)
        if row is None or row.status not in TERMINAL_STATUSES:
            return None
        return RequestRead.model_validate(row).model_dump(mode="json")


def _model_label(row: InferenceRequest) -> str:
    """The request's model as a metric label: only registered names, so a job queued for a
    typo (QUEUE_WHILE_UNAVAILABLE) cannot add a series."""
    return row.model_name if row.model_id else "<unregistered>"


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
    with get_db().unit_of_work() as session:
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
        current_celery().control.revoke(str(request_id))
    else:
        _events().redis.set(cancel_key(request_id), 1, ex=current_settings().event_ttl_s)
