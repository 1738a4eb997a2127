"""db/inference.py statement by statement: what each compare-and-set takes, what it leaves
alone, and every column it writes. The mutation run (docs/mutation-testing.md) holds these
tests to the SQL: a flipped comparison or a dropped condition must fail one of them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from db.base import utcnow
from db.fleet import Availability, availability
from db.inference import (
    ClaimedJob,
    Inserted,
    NewRequest,
    Outcome,
    cancel,
    claim,
    find_by_idempotency_key,
    finish,
    insert_if_servable,
    renew_leases,
)
from db.models import (
    InferenceRequest,
    Model,
    ModelStatus,
    ModelUsageStats,
    NodeStatus,
    ReplicaStatus,
    RequestStatus,
    User,
)
from db.recovery import (
    hand_back,
    mark_dispatched,
    requeue_expired_leases,
    undispatched,
    undo_dispatch,
)
from db.session import Database
from tests.factories import InferenceRequestFactory, ModelFactory, ModelReplicaFactory, UserFactory

SECOND = timedelta(seconds=1)
LEASE = timedelta(seconds=30)
STALE_AFTER = timedelta(seconds=30)
MINUTE = timedelta(minutes=1)


def _now(session: Session) -> datetime:
    """The database's now(): fixed for the whole test, which runs in one transaction."""
    now: datetime = session.scalar(select(func.now()))
    return now


def _row(session: Session, request_id: uuid.UUID) -> InferenceRequest:
    session.expire_all()
    row = session.get(InferenceRequest, request_id)
    assert row is not None
    return row


# --- insert_if_servable ------------------------------------------------------------------


def _new(user: User, model_name: str, key: str | None = None, **fields: Any) -> NewRequest:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": user.id,
        "model_name": model_name,
        "kind": "chat",
        "source": "ollama",
        "input": {"messages": [{"role": "user", "content": "hi"}]},
        "options": {"temperature": 0.5},
        "priority": 7,
        "idempotency_key": key,
        "request_hash": "h" * 64,
    }
    return NewRequest(**{**values, **fields})


def _served(session: Session, **node: Any) -> Model:
    """A model held by one node: online, undrained, with a fresh heartbeat unless `node`
    says otherwise."""
    fields = {"status": NodeStatus.ONLINE, "drained": False, "last_heartbeat_at": _now(session)}
    replica = ModelReplicaFactory(
        model__status=ModelStatus.AVAILABLE,
        **{f"node__{name}": value for name, value in {**fields, **node}.items()},
    )
    model: Model = replica.model
    return model


def _served_model_id(session: Session, name: str) -> uuid.UUID | None:
    return session.scalar(select(Model.id).where(Model.name == name))


def _insert(
    session: Session, new: NewRequest, *, queue_while_unavailable: bool = False
) -> Inserted | None:
    return insert_if_servable(
        executor=session,
        new=new,
        stale_after=STALE_AFTER,
        queue_while_unavailable=queue_while_unavailable,
    )


def test_a_served_model_takes_the_job_with_every_field(db_session: Session) -> None:
    user, model = UserFactory(), _served(db_session)
    model_name, model_id = model.name, model.id
    new = _new(user, model_name, key="k-1")

    inserted = _insert(db_session, new)

    assert inserted == Inserted(new.id, model_id)
    row = _row(db_session, new.id)
    assert (row.user_id, row.model_name, row.model_id) == (user.id, model_name, model_id)
    assert (row.kind, row.source, row.input, row.options) == (
        new.kind,
        new.source,
        new.input,
        new.options,
    )
    assert (row.priority, row.idempotency_key, row.request_hash) == (7, "k-1", "h" * 64)
    assert (row.status, row.attempt) == (RequestStatus.QUEUED, 1)
    assert row.dispatched_at == _now(db_session)  # marked: the caller publishes next
    assert (row.worker_name, row.started_at, row.cancel_requested_at) == (None, None, None)


@pytest.mark.parametrize(
    "node",
    [
        {"status": NodeStatus.OFFLINE},
        {"status": NodeStatus.DEGRADED},
        {"drained": True},
        {"last_heartbeat_at": None},
    ],
    ids=["offline", "degraded", "drained", "never-heard"],
)
def test_a_model_no_usable_node_serves_refuses_the_job(
    db_session: Session, node: dict[str, Any]
) -> None:
    user, model_name = UserFactory(), _served(db_session, **node).name
    assert _insert(db_session, _new(user, model_name)) is None
    # ...unless jobs may wait for a node: then it is queued, for the registered model.
    new = _new(user, model_name)
    inserted = _insert(db_session, new, queue_while_unavailable=True)
    assert inserted is not None
    assert inserted.model_id == _served_model_id(db_session, model_name)
    assert _row(db_session, new.id).model_id == inserted.model_id


def test_a_heartbeat_older_than_stale_after_does_not_count(db_session: Session) -> None:
    user, now = UserFactory(), _now(db_session)
    at_the_limit = _served(db_session, last_heartbeat_at=now - STALE_AFTER).name
    just_inside = _served(db_session, last_heartbeat_at=now - STALE_AFTER + SECOND).name
    assert _insert(db_session, _new(user, at_the_limit)) is None
    assert _insert(db_session, _new(user, just_inside)) is not None


def test_only_an_available_replica_serves(db_session: Session) -> None:
    user = UserFactory()
    pulling = ModelReplicaFactory(
        status=ReplicaStatus.PULLING,
        model__status=ModelStatus.AVAILABLE,
        node__last_heartbeat_at=_now(db_session),
    )
    assert _insert(db_session, _new(user, pulling.model.name)) is None


def test_availability_reads_the_same_rule(db_session: Session) -> None:
    """db.fleet.availability tells a refused submission why (disabled, or not served)."""
    model, stale = _served(db_session), _served(db_session, last_heartbeat_at=utcnow() - MINUTE)
    assert _availability(db_session, model.name) == Availability(model.id, False, True)
    assert _availability(db_session, stale.name) == Availability(stale.id, False, False)
    assert _availability(db_session, "typo:latest") == Availability(None, False, False)
    db_session.execute(update(Model).where(Model.id == model.id).values(status="disabled"))
    assert _availability(db_session, model.name) == Availability(model.id, True, True)


def _availability(session: Session, name: str) -> Availability:
    return availability(session=session, model_name=name, stale_after=STALE_AFTER)


def test_a_model_served_elsewhere_does_not_serve_this_one(db_session: Session) -> None:
    """The replica must be this model's, on a node that is the replica's."""
    user = UserFactory()
    _served(db_session)
    idle = ModelFactory(status=ModelStatus.AVAILABLE)
    assert _insert(db_session, _new(user, idle.name)) is None


@pytest.mark.parametrize("queue_while_unavailable", [False, True])
def test_a_disabled_model_refuses_even_when_served_or_queueing(
    db_session: Session, queue_while_unavailable: bool
) -> None:
    user, model = UserFactory(), _served(db_session)
    model_name = model.name
    db_session.execute(
        update(Model).where(Model.id == model.id).values(status=ModelStatus.DISABLED)
    )
    new = _new(user, model_name)
    assert _insert(db_session, new, queue_while_unavailable=queue_while_unavailable) is None
    assert db_session.get(InferenceRequest, new.id) is None


def test_an_unregistered_model_queues_only_when_allowed(db_session: Session) -> None:
    user = UserFactory()
    assert _insert(db_session, _new(user, "typo:latest")) is None
    new = _new(user, "typo:latest")
    assert _insert(db_session, new, queue_while_unavailable=True) == Inserted(new.id, None)
    assert _row(db_session, new.id).status == RequestStatus.QUEUED


def test_an_idempotency_key_names_one_job_per_user(db_session: Session) -> None:
    alice, bob, model_name = UserFactory(), UserFactory(), _served(db_session).name
    first = _new(alice, model_name, key="same")
    assert _insert(db_session, first) is not None

    again = _new(alice, model_name, key="same", request_hash="other")
    assert _insert(db_session, again) is None  # no error: the caller looks up why
    assert db_session.get(InferenceRequest, again.id) is None
    found = find_by_idempotency_key(session=db_session, user_id=alice.id, key="same")
    assert found is not None
    assert found.id == first.id
    assert find_by_idempotency_key(session=db_session, user_id=bob.id, key="same") is None

    # Another user's key, and jobs without a key, are not duplicates.
    assert _insert(db_session, _new(bob, model_name, key="same")) is not None
    assert _insert(db_session, _new(alice, model_name)) is not None
    assert _insert(db_session, _new(alice, model_name)) is not None


def test_undo_dispatch_leaves_the_job_to_the_outbox_sweeper(db_session: Session) -> None:
    queued = InferenceRequestFactory(dispatched_at=utcnow())
    running = InferenceRequestFactory(status="running", worker_name="w", dispatched_at=utcnow())
    undo_dispatch(session=db_session, request_id=queued.id)
    undo_dispatch(session=db_session, request_id=running.id)
    assert _row(db_session, queued.id).dispatched_at is None
    assert _row(db_session, running.id).dispatched_at is not None


def test_mark_dispatched_restarts_the_lost_message_clock(db_session: Session) -> None:
    a, b, c = (InferenceRequestFactory() for _ in range(3))
    mark_dispatched(session=db_session, request_ids=[a.id, b.id])
    now = _now(db_session)
    assert [_row(db_session, job.id).dispatched_at for job in (a, b, c)] == [now, now, None]


# --- claim ---------------------------------------------------------------------------------


def test_a_claim_returns_what_the_worker_needs_and_marks_the_row(db_session: Session) -> None:
    user, node = UserFactory(), ModelReplicaFactory().node
    job = InferenceRequestFactory(
        user_id=user.id, priority=8, options={"seed": 1}, attempt=2, dispatched_at=None
    )
    now = _now(db_session)

    claimed = claim(
        executor=db_session, request_id=job.id, worker_name="w1", node_id=node.id, lease=LEASE
    )

    row = _row(db_session, job.id)
    assert claimed == ClaimedJob(
        id=job.id,
        kind=row.kind,
        model_name=row.model_name,
        input=row.input,
        options={"seed": 1},
        attempt=2,
        queued_at=row.queued_at,
        started_at=now,
        user_id=user.id,
        priority=8,
    )
    assert (row.status, row.worker_name, row.node_id) == (RequestStatus.RUNNING, "w1", node.id)
    assert (row.lease_until, row.started_at) == (now + LEASE, now)
    assert row.dispatched_at == now  # never marked (published by the sweeper): now


def test_a_claim_keeps_the_time_it_was_dispatched(db_session: Session) -> None:
    earlier = utcnow() - timedelta(minutes=3)
    job = InferenceRequestFactory(dispatched_at=earlier)
    assert claim(executor=db_session, request_id=job.id, worker_name="w", node_id=None, lease=LEASE)
    assert _row(db_session, job.id).dispatched_at == earlier


def test_the_exact_claim_needs_a_unit_of_works_session(db_session: Session) -> None:
    """Its lock and capped claim must share a transaction: a bare connection (one in
    autocommit from `Database.one_call`) is refused before any statement is sent."""
    job = InferenceRequestFactory()
    with pytest.raises(TypeError):
        claim(
            executor=db_session.connection(),
            request_id=job.id,
            worker_name="w",
            node_id=None,
            lease=LEASE,
        )
    assert _row(db_session, job.id).status == RequestStatus.QUEUED


def test_a_claim_refuses_a_cancelled_an_ended_or_another_job(db_session: Session) -> None:
    asked = InferenceRequestFactory(cancel_requested_at=utcnow())
    ended = InferenceRequestFactory(status="cancelled")
    other = InferenceRequestFactory()
    for job in (asked, ended):
        assert (
            claim(
                executor=db_session, request_id=job.id, worker_name="w", node_id=None, lease=LEASE
            )
            is None
        )
    assert _row(db_session, asked.id).status == RequestStatus.QUEUED
    assert _row(db_session, other.id).status == RequestStatus.QUEUED


# --- renew_leases --------------------------------------------------------------------------


def _running(worker: str = "w", attempt: int = 1, **fields: Any) -> InferenceRequest:
    started = utcnow() - timedelta(minutes=2)
    values: dict[str, Any] = {
        "status": "running",
        "worker_name": worker,
        "attempt": attempt,
        "lease_until": utcnow() - timedelta(minutes=1),
        "started_at": started,
        "first_token_at": started,
        "dispatched_at": started,
        "output": "partial",
    }
    return InferenceRequestFactory(**{**values, **fields})


def _claimed(row: InferenceRequest) -> ClaimedJob:
    return ClaimedJob(
        id=row.id,
        kind=row.kind,
        model_name=row.model_name,
        input=row.input,
        options=row.options,
        attempt=row.attempt,
        queued_at=row.queued_at,
        started_at=row.started_at or row.queued_at,
        user_id=row.user_id,
    )


def test_renewing_extends_our_leases_and_reports_cancels(db_session: Session) -> None:
    mine = _running()
    asked = _running(cancel_requested_at=utcnow())
    other_worker = _running(worker="other")
    old_attempt = _running(attempt=2)
    handed_back = InferenceRequestFactory(worker_name="w")
    leases_before = {job.id: job.lease_until for job in (other_worker, old_attempt, handed_back)}

    renewed = renew_leases(
        session=db_session,
        worker_name="w",
        jobs=[(job.id, 1) for job in (mine, asked, other_worker, old_attempt, handed_back)],
        lease=LEASE,
    )

    assert renewed == {mine.id: False, asked.id: True}
    now = _now(db_session)
    assert _row(db_session, mine.id).lease_until == now + LEASE
    assert _row(db_session, asked.id).lease_until == now + LEASE
    for job_id, before in leases_before.items():
        assert _row(db_session, job_id).lease_until == before


def test_renewing_nothing_is_an_empty_answer(db_session: Session) -> None:
    _running()
    assert renew_leases(session=db_session, worker_name="w", jobs=[], lease=LEASE) == {}


# --- finish and the day's usage ------------------------------------------------------------


def _usage(session: Session, model_name: str) -> dict[str, Any] | None:
    session.expire_all()
    row = session.get(ModelUsageStats, (model_name, utcnow().date()))
    if row is None:
        return None
    return {
        name: getattr(row, name)
        for name in (
            "requests",
            "completed",
            "errors",
            "cancelled",
            "prompt_tokens",
            "completion_tokens",
            "total_duration_ns",
            "queue_wait_ms",
        )
    }


METRICS = {
    "prompt_eval_count": 11,
    "eval_count": 22,
    "total_duration": 3_000,
    "load_duration": 400,
    "prompt_eval_duration": 500,
    "eval_duration": 600,
}


def test_finish_writes_the_result_once_and_counts_it_once(db_session: Session) -> None:
    row = _running(model_name="finish:latest")
    job = _claimed(row)
    job = ClaimedJob(**{**job.__dict__, "started_at": job.queued_at + timedelta(seconds=1.5)})
    first_token = utcnow()
    outcome = Outcome(
        status=RequestStatus.COMPLETED,
        output="blue",
        done_reason="stop",
        metrics=METRICS,
        output_message={"role": "assistant", "content": "blue"},
    )

    assert finish(
        executor=db_session, job=job, worker_name="w", outcome=outcome, first_token_at=first_token
    )

    done = _row(db_session, row.id)
    assert (done.status, done.output, done.done_reason) == ("completed", "blue", "stop")
    assert done.output_message == {"role": "assistant", "content": "blue"}
    assert (done.error, done.error_code, done.lease_until) == (None, None, None)
    assert (done.completed_at, done.first_token_at) == (_now(db_session), first_token)
    assert {name: getattr(done, name) for name in METRICS} == METRICS
    assert _usage(db_session, "finish:latest") == {
        "requests": 1,
        "completed": 1,
        "errors": 0,
        "cancelled": 0,
        "prompt_tokens": 11,
        "completion_tokens": 22,
        "total_duration_ns": 3_000,
        "queue_wait_ms": 1_500,
    }
    updated_at = db_session.get(ModelUsageStats, ("finish:latest", utcnow().date()))
    assert updated_at is not None
    assert updated_at.updated_at == _now(db_session)

    # The same job again (a duplicate task, a late retry): not ours any more, not counted.
    assert not finish(executor=db_session, job=job, worker_name="w", outcome=outcome)
    assert _usage(db_session, "finish:latest")["requests"] == 1  # type: ignore[index]


def test_a_failure_and_a_cancel_add_to_the_days_row(db_session: Session) -> None:
    failed, cancelled = _running(model_name="sum:latest"), _running(model_name="sum:latest")
    assert finish(
        executor=db_session,
        job=_claimed(failed),
        worker_name="w",
        outcome=Outcome(
            status=RequestStatus.FAILED,
            output="",
            error="engine down",
            error_code="engine_error",
            metrics={"prompt_eval_count": 3, "eval_count": None},
        ),
    )
    assert finish(
        executor=db_session,
        job=_claimed(cancelled),
        worker_name="w",
        outcome=Outcome(status=RequestStatus.CANCELLED, output="half", metrics=None),
    )
    failed_row = _row(db_session, failed.id)
    assert (failed_row.error, failed_row.error_code) == ("engine down", "engine_error")
    assert (failed_row.prompt_eval_count, failed_row.eval_count) == (3, None)
    assert _row(db_session, cancelled.id).output == "half"
    usage = _usage(db_session, "sum:latest")
    assert usage is not None
    assert (usage["requests"], usage["completed"], usage["errors"], usage["cancelled"]) == (
        2,
        0,
        1,
        1,
    )
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_duration_ns"]) == (
        3,
        0,
        0,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"worker_name": "someone-else"},
        {"attempt": 2},  # swept and claimed again meanwhile
        {"status": "queued"},  # handed back
        {"status": "cancelled"},  # ended
    ],
)
def test_a_job_no_longer_ours_is_neither_written_nor_counted(
    db_session: Session, change: dict[str, Any]
) -> None:
    row = _running(model_name="lost:latest")
    job = _claimed(row)
    for name, value in change.items():
        setattr(row, name, value)
    db_session.flush()
    outcome = Outcome(status=RequestStatus.COMPLETED, output="late", metrics=METRICS)
    assert not finish(executor=db_session, job=job, worker_name="w", outcome=outcome)
    assert _row(db_session, row.id).output == "partial"
    assert _usage(db_session, "lost:latest") is None


def test_a_result_without_a_message_stores_sql_null(db_session: Session) -> None:
    """Not JSON `null`: `output_message IS NULL` is how SQL finds results without one."""
    row = _running()
    outcome = Outcome(status=RequestStatus.COMPLETED, output="done")
    assert finish(executor=db_session, job=_claimed(row), worker_name="w", outcome=outcome)
    is_null = db_session.scalar(
        select(InferenceRequest.output_message.is_(None)).where(InferenceRequest.id == row.id)
    )
    assert is_null is True


def test_a_value_too_long_for_its_column_is_refused_not_cut_short(db_session: Session) -> None:
    """The finish's parameters are plain VARCHAR: a cast to the column's VARCHAR(32) would
    store the first 32 characters of an engine's done_reason and say nothing."""
    row = _running()
    outcome = Outcome(status=RequestStatus.COMPLETED, output="done", done_reason="x" * 40)
    with pytest.raises(DataError, match="too long"), db_session.begin_nested():
        finish(executor=db_session, job=_claimed(row), worker_name="w", outcome=outcome)
    assert _row(db_session, row.id).status == RequestStatus.RUNNING


def test_finish_touches_only_its_own_job(db_session: Session) -> None:
    mine, neighbour = _running(), _running()
    outcome = Outcome(status=RequestStatus.COMPLETED, output="done")
    assert finish(executor=db_session, job=_claimed(mine), worker_name="w", outcome=outcome)
    assert _row(db_session, neighbour.id).status == RequestStatus.RUNNING


# --- cancel --------------------------------------------------------------------------------


def test_cancelling_a_queued_job_ends_it(db_session: Session) -> None:
    job = InferenceRequestFactory()
    assert cancel(session=db_session, request_id=job.id) == "cancelled"
    row, now = _row(db_session, job.id), _now(db_session)
    assert (row.status, row.done_reason) == (RequestStatus.CANCELLED, "cancelled")
    assert (row.completed_at, row.cancel_requested_at) == (now, now)


def test_cancelling_a_running_job_only_marks_it(db_session: Session) -> None:
    job = _running(done_reason=None)
    assert cancel(session=db_session, request_id=job.id) == "running"
    row = _row(db_session, job.id)
    assert (row.status, row.completed_at, row.done_reason) == ("running", None, None)
    assert row.cancel_requested_at == _now(db_session)


def test_cancelling_an_ended_job_changes_nothing(db_session: Session) -> None:
    done_at = utcnow() - timedelta(minutes=1)
    job = InferenceRequestFactory(status="completed", completed_at=done_at, done_reason="stop")
    other = InferenceRequestFactory()
    assert cancel(session=db_session, request_id=job.id) is None
    row = _row(db_session, job.id)
    assert (row.status, row.completed_at, row.done_reason, row.cancel_requested_at) == (
        "completed",
        done_at,
        "stop",
        None,
    )
    assert _row(db_session, other.id).cancel_requested_at is None


# --- hand_back -----------------------------------------------------------------------------


def test_handing_back_requeues_with_the_next_attempt(db_session: Session) -> None:
    node = ModelReplicaFactory().node
    row = _running(node_id=node.id, lease_until=utcnow() + LEASE)
    assert hand_back(session=db_session, job=_claimed(row), worker_name="w") == "queued"
    back = _row(db_session, row.id)
    assert (back.status, back.attempt, back.output) == ("queued", 2, None)
    assert (back.worker_name, back.node_id, back.lease_until) == (None, None, None)
    assert (back.started_at, back.first_token_at, back.completed_at) == (None, None, None)
    assert back.dispatched_at is None  # the outbox sweeper publishes it again


def test_handing_back_a_job_asked_to_stop_cancels_it(db_session: Session) -> None:
    row = _running(cancel_requested_at=utcnow())
    started = row.started_at
    assert hand_back(session=db_session, job=_claimed(row), worker_name="w") == "cancelled"
    back = _row(db_session, row.id)
    assert (back.status, back.attempt, back.output) == ("cancelled", 1, "partial")
    assert (back.started_at, back.completed_at) == (started, _now(db_session))
    assert (back.worker_name, back.lease_until, back.dispatched_at) == (None, None, None)


def _hand_back_bounded(db_session: Session, row: InferenceRequest) -> str | None:
    """As a worker whose engine is down hands a job back: bounded at the third attempt."""
    return hand_back(
        session=db_session,
        job=_claimed(row),
        worker_name="w",
        max_attempts=3,
        error="the engine did not answer",
        error_code="engine_unreachable",
    )


def test_a_bounded_hand_back_before_the_last_attempt_requeues_without_an_error(
    db_session: Session,
) -> None:
    row = _running(attempt=2, error="earlier", error_code="earlier_code")
    assert _hand_back_bounded(db_session, row) == "queued"
    back = _row(db_session, row.id)
    assert (back.status, back.attempt, back.output, back.completed_at) == ("queued", 3, None, None)
    assert (back.error, back.error_code) == ("earlier", "earlier_code")  # untouched


def test_a_bounded_hand_back_on_the_last_attempt_fails_the_job_with_its_error(
    db_session: Session,
) -> None:
    row = _running(attempt=3)
    started = row.started_at
    assert _hand_back_bounded(db_session, row) == "failed"
    back = _row(db_session, row.id)
    assert (back.status, back.attempt, back.output) == ("failed", 3, "partial")
    assert (back.error, back.error_code) == ("the engine did not answer", "engine_unreachable")
    assert (back.started_at, back.completed_at) == (started, _now(db_session))
    assert (back.worker_name, back.lease_until, back.dispatched_at) == (None, None, None)


def test_a_bounded_hand_back_of_a_job_asked_to_stop_cancels_it_without_an_error(
    db_session: Session,
) -> None:
    row = _running(attempt=3, cancel_requested_at=utcnow())
    assert _hand_back_bounded(db_session, row) == "cancelled"
    back = _row(db_session, row.id)
    assert (back.status, back.attempt, back.error, back.error_code) == ("cancelled", 3, None, None)


def test_an_unbounded_hand_back_requeues_whatever_the_attempt(db_session: Session) -> None:
    row = _running(attempt=7)
    assert hand_back(session=db_session, job=_claimed(row), worker_name="w") == "queued"
    assert _row(db_session, row.id).attempt == 8


@pytest.mark.parametrize(
    "change",
    [{"worker_name": "other"}, {"attempt": 2}, {"status": "queued"}, {"status": "completed"}],
)
def test_handing_back_a_job_no_longer_ours_changes_nothing(
    db_session: Session, change: dict[str, Any]
) -> None:
    row = _running()
    job = _claimed(row)
    for name, value in change.items():
        setattr(row, name, value)
    db_session.flush()
    assert hand_back(session=db_session, job=job, worker_name="w") is None
    after = _row(db_session, row.id)
    assert (after.output, after.started_at) == ("partial", job.started_at)


# --- requeue_expired_leases ----------------------------------------------------------------


def test_a_lease_that_has_not_run_out_is_left_alone(db_session: Session) -> None:
    now = _now(db_session)
    at_the_limit = _running(lease_until=now)
    later = _running(lease_until=now + SECOND)
    queued = InferenceRequestFactory(lease_until=now - SECOND)  # not running: not a lease
    assert requeue_expired_leases(session=db_session, max_attempts=3) == []
    for job in (at_the_limit, later):
        assert _row(db_session, job.id).status == RequestStatus.RUNNING
    assert _row(db_session, queued.id).attempt == 1


def test_a_requeue_reports_the_job_and_clears_the_run(db_session: Session) -> None:
    user, node = UserFactory(), ModelReplicaFactory().node
    job = _running(
        user_id=user.id, node_id=node.id, priority=9, model_name="m:1", error="first try"
    )
    [swept] = requeue_expired_leases(session=db_session, max_attempts=3)
    assert (swept.request_id, swept.model_name, swept.priority) == (job.id, "m:1", 9)
    assert (swept.status, swept.attempt, swept.user_id) == ("queued", 2, user.id)
    row = _row(db_session, job.id)
    assert (row.status, row.attempt, row.output, row.completed_at) == ("queued", 2, None, None)
    assert (row.worker_name, row.node_id, row.lease_until) == (None, None, None)
    assert (row.started_at, row.first_token_at, row.dispatched_at) == (None, None, None)
    assert (row.error, row.error_code) == ("first try", None)


def test_a_job_on_its_last_attempt_fails_and_keeps_its_run(db_session: Session) -> None:
    job = _running(attempt=3)
    started = job.started_at
    [swept] = requeue_expired_leases(session=db_session, max_attempts=3)
    assert (swept.status, swept.attempt) == ("failed", 3)
    row = _row(db_session, job.id)
    assert (row.status, row.attempt, row.output) == ("failed", 3, "partial")
    assert (row.error, row.error_code) == ("its worker was lost on every attempt", "worker_lost")
    assert (row.started_at, row.completed_at) == (started, _now(db_session))
    assert (row.worker_name, row.lease_until, row.first_token_at) == (None, None, None)


def test_a_cancel_wins_over_the_last_attempt(db_session: Session) -> None:
    job = _running(attempt=3, cancel_requested_at=utcnow())
    [swept] = requeue_expired_leases(session=db_session, max_attempts=3)
    assert (swept.status, swept.attempt) == ("cancelled", 3)
    row = _row(db_session, job.id)
    assert (row.error, row.error_code, row.output) == (None, None, "partial")
    assert row.completed_at == _now(db_session)


def test_one_attempt_below_the_limit_is_requeued(db_session: Session) -> None:
    job = _running(attempt=2)
    [swept] = requeue_expired_leases(session=db_session, max_attempts=3)
    assert (swept.request_id, swept.status, swept.attempt) == (job.id, "queued", 3)


def test_a_sweep_takes_at_most_limit_jobs(db_session: Session) -> None:
    jobs = [_running() for _ in range(3)]
    first = requeue_expired_leases(session=db_session, max_attempts=3, limit=2)
    assert len(first) == 2
    rest = requeue_expired_leases(session=db_session, max_attempts=3, limit=2)
    assert {swept.request_id for swept in first + rest} == {job.id for job in jobs}


def test_a_sweep_skips_a_job_another_sweeper_holds(committed: Database) -> None:
    """Two sweepers at once: the second passes over the rows the first has locked, rather
    than waiting for them (and then requeueing them a second time)."""
    with committed.unit_of_work() as session:
        held, free = (
            InferenceRequest(
                model_name="m",
                kind="generate",
                input={},
                status="running",
                worker_name="w",
                lease_until=utcnow() - timedelta(minutes=1),
            )
            for _ in range(2)
        )
        session.add_all([held, free])
    with committed.engine.connect() as other:
        other.execute(
            text("SELECT id FROM inference_requests WHERE id = :id FOR UPDATE"), {"id": held.id}
        )
        with committed.unit_of_work() as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            swept = requeue_expired_leases(session=session, max_attempts=3)
        other.rollback()
    assert [job.request_id for job in swept] == [free.id]


def test_a_sweep_takes_a_hundred_jobs_by_default(db_session: Session) -> None:
    for _ in range(101):
        _running()
    assert len(requeue_expired_leases(session=db_session, max_attempts=3)) == 100


# --- undispatched --------------------------------------------------------------------------


def test_undispatched_finds_unpublished_and_lost_jobs_oldest_first(db_session: Session) -> None:
    now = _now(db_session)
    older_than, lost_after = timedelta(seconds=10), timedelta(minutes=1)
    never_old = InferenceRequestFactory(queued_at=now - 2 * older_than, priority=3)
    lost = InferenceRequestFactory(
        queued_at=now - 3 * older_than, dispatched_at=now - 2 * lost_after
    )
    InferenceRequestFactory(queued_at=now - older_than)  # at the limit: wait
    InferenceRequestFactory(queued_at=now)  # just accepted: its publish is under way
    InferenceRequestFactory(queued_at=now - 3 * older_than, dispatched_at=now - lost_after)
    InferenceRequestFactory(status="running", queued_at=now - 2 * older_than)
    InferenceRequestFactory(
        status="running", queued_at=now - 2 * older_than, dispatched_at=now - 2 * lost_after
    )

    found = undispatched(session=db_session, older_than=older_than, lost_after=lost_after)

    assert found == [(lost.id, lost.model_name, 5), (never_old.id, never_old.model_name, 3)]
    assert undispatched(
        session=db_session, older_than=older_than, lost_after=lost_after, limit=1
    ) == [(lost.id, lost.model_name, 5)]


def test_undispatched_takes_five_hundred_by_default(db_session: Session) -> None:
    past = _now(db_session) - timedelta(minutes=1)
    db_session.execute(
        InferenceRequest.__table__.insert(),
        [
            {
                "id": uuid.uuid4(),
                "model_name": "m",
                "kind": "generate",
                "input": {},
                "queued_at": past,
            }
            for _ in range(501)
        ],
    )
    assert len(undispatched(session=db_session, older_than=SECOND, lost_after=SECOND)) == 500
