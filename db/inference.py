"""A request's life in the database: submit, claim, lease, finish, cancel. Shared by web
and workers; the recovery side (hand-back, sweeps, dispatch marks) is db/recovery.py. Every
state change is a compare-and-set, so a duplicate task, a late worker or a sweeper racing a
worker cannot both win."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Date,
    Interval,
    String,
    Table,
    bindparam,
    case,
    column,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import InferenceRequest, RequestStatus
from db.session import Executor, core_connection


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job, read in the same statement that claimed it."""

    id: uuid.UUID
    kind: str
    model_name: str
    input: dict[str, Any]
    options: dict[str, Any]
    attempt: int
    queued_at: datetime
    started_at: datetime
    user_id: uuid.UUID | None  # events name the owner, so topic sockets can filter by it
    priority: int = 5
    api_key_id: uuid.UUID | None = None  # the key it came with: its token ledger counts it


@dataclass(frozen=True)
class NewRequest:
    """A job as accepted from a caller, before it has a row."""

    id: uuid.UUID
    user_id: uuid.UUID
    model_name: str
    kind: str
    source: str
    input: dict[str, Any]
    options: dict[str, Any]
    priority: int
    idempotency_key: str | None
    request_hash: str
    api_key_id: uuid.UUID | None = None
    running_cap: int | None = None  # how many of the owner's jobs may run at once
    key_running_cap: int | None = None  # ... and of its key's
    webhook_url: str | None = None  # where its terminal status is POSTed (docs/webhooks.md)


@dataclass(frozen=True)
class Admission:
    """The quotas a new job must fit, checked by the statement that inserts it (None: no
    limit): the jobs its owner and its key have waiting, and the tokens each spent on `day`
    (UTC)."""

    day: date
    max_queued_jobs: int | None = None
    key_max_queued_jobs: int | None = None
    tokens_per_day: int | None = None
    key_tokens_per_day: int | None = None

    @property
    def counts_jobs(self) -> bool:
        return self.max_queued_jobs is not None or self.key_max_queued_jobs is not None


@dataclass(frozen=True)
class Inserted:
    id: uuid.UUID
    model_id: uuid.UUID | None  # None: queued for a model that is not registered


def insert_if_servable(
    *,
    executor: Executor,
    new: NewRequest,
    stale_after: timedelta,
    queue_while_unavailable: bool,
    admission: Admission | None = None,
) -> Inserted | None:
    """Insert the job as `queued` in one statement, a call of the admit() function
    (migration 0009), if its model may take it (not disabled, and served by an online,
    undrained node with a fresh heartbeat, or queueing for absent models is allowed) and it
    fits its quotas; its options bounded by its model's limits on the way. Returns what was
    inserted, or None when nothing was (the model refused it, a quota did, or this
    Idempotency-Key already names a job): the caller then looks up why, off the hot path.

    A limit on waiting jobs is counted under a lock on the owner, taken inside the call
    before the count (which then sees every job committed before the lock): two web
    processes admitting the same user's jobs take turns, so the limit holds exactly. The
    daily tokens are read without it: a running job spends them after it was admitted. One
    statement either way, so the caller may send it in autocommit (`Database.one_call`).

    `dispatched_at` is set now: the caller publishes right after the commit, and clears it
    with `undo_dispatch` if that publish fails, so the outbox sweeper takes over. Marking in
    the same statement saves the second transaction a mark would cost.
    """
    admission = admission or Admission(day=utcnow().date())
    params = {
        **{f"v_{name}": getattr(new, name) for name in _NEW_REQUEST_COLUMNS},
        "stale_after": stale_after,
        "queue_anyway": queue_while_unavailable,
        **{f"q_{name}": getattr(admission, name) for name, _ in _ADMISSION_LIMITS},
    }
    row = core_connection(executor).execute(_ADMIT, params).first()
    return Inserted(row[0], row[1]) if row else None


# Advisory-lock classes (the first key of pg_advisory_xact_lock's pair; the second is the
# owner's hash). Capped claims of one user take turns under RUNNING_LOCK, in fair_claim()
# (which writes it as 5197058) or below for the exact claim; admissions of one user take
# turns in admit() under 0x4F4D01 (5197057), which no Python code takes.
RUNNING_LOCK = 0x4F4D02


# The admission's limits (Admission's fields), with the SQL types admit() declares for them.
_ADMISSION_LIMITS = (
    ("day", "date"),
    ("max_queued_jobs", "integer"),
    ("key_max_queued_jobs", "integer"),
    ("tokens_per_day", "bigint"),
    ("key_tokens_per_day", "bigint"),
)


# admit()'s parameters after the job's columns, and their SQL types.
_ADMISSION_PARAMETERS = (
    ("stale_after", "interval"),
    ("queue_anyway", "boolean"),
    *((f"q_{name}", sql_type) for name, sql_type in _ADMISSION_LIMITS),
)
_NEW_REQUEST_COLUMNS = (
    "id",
    "user_id",
    "model_name",
    "kind",
    "source",
    "input",
    "options",
    "priority",
    "idempotency_key",
    "request_hash",
    "api_key_id",
    "running_cap",
    "key_running_cap",
    "webhook_url",
)


# The hot path's statements are built once, with parameters for their values: building one
# costs more CPU than PostgreSQL spends running it (2-3 ms for the finish when it was one
# statement of CTEs), and a statement object reused keeps its cache key. They target the
# tables and run on the session's connection (Core): an ORM statement given parameters would
# mean a bulk write.
_REQUESTS = cast(Table, InferenceRequest.__table__)


def _admit_call() -> Any:
    """SELECT * FROM admit(...), each parameter cast to the type the function declares
    (PostgreSQL picks a function by its argument types: an integer is no smallint)."""
    table = InferenceRequest.__table__
    columns = [(f"v_{name}", table.c[name].type) for name in _NEW_REQUEST_COLUMNS]
    dialect = postgresql.dialect()
    casts = [f"CAST(:{name} AS {type_.compile(dialect=dialect)})" for name, type_ in columns] + [
        f"CAST(:{name} AS {sql_type})" for name, sql_type in _ADMISSION_PARAMETERS
    ]
    return (
        text(f"SELECT * FROM admit({', '.join(casts)})")
        .bindparams(
            *(bindparam(name, type_=type_) for name, type_ in columns),
            bindparam("stale_after", type_=Interval),
            bindparam("q_day", type_=Date),
        )
        .columns(
            column("id", InferenceRequest.id.type),
            column("model_id", InferenceRequest.model_id.type),
        )
    )


_ADMIT = _admit_call()


def find_by_idempotency_key(
    *, session: Session, user_id: uuid.UUID, key: str
) -> InferenceRequest | None:
    return session.scalar(
        select(InferenceRequest).where(
            InferenceRequest.user_id == user_id, InferenceRequest.idempotency_key == key
        )
    )


@dataclass(frozen=True)
class Standing:
    owner: uuid.UUID | None
    status: str


def standing(*, executor: Executor, request_id: uuid.UUID) -> Standing | None:
    """Whose request this is and where it stands, two columns rather than the row: what a
    follower's handshake needs (the owner never changes). A call of request_standing()
    (migration 0012): planned once per connection, where the lookup itself was planned at
    every handshake for six times what it took to run."""
    row = core_connection(executor).execute(_STANDING, {"request_id": request_id}).one_or_none()
    return None if row is None else Standing(owner=row[0], status=row[1])


_STANDING = (
    text("SELECT * FROM request_standing(:request_id)")
    .bindparams(bindparam("request_id", type_=InferenceRequest.id.type))
    .columns(
        column("owner_id", InferenceRequest.user_id.type),
        column("job_status", InferenceRequest.status.type),
    )
)


class AtRunningCap(Exception):
    """The job waits: its owner (or its key) already has as many jobs running as its cap."""


@dataclass(frozen=True)
class FairShare:
    """How the claim orders a model's waiting jobs across owners (docs/pipeline.md, "Fair
    share"): an owner's starts of the model within `window` (running jobs count too),
    divided by their weight (`default_weight` unless an admin set theirs), less a start of
    credit per `aging_s` their oldest waiting job has waited, less `priority_credit` starts
    per priority level of their head job above 5 (more for levels below): the lowest goes
    first. Within an owner: priority, then age."""

    window: timedelta
    aging_s: float
    priority_credit: float
    default_weight: float


def claim(
    *,
    executor: Executor,
    request_id: uuid.UUID,
    worker_name: str,
    node_id: uuid.UUID | None,
    lease: timedelta,
    fair: FairShare | None = None,
) -> ClaimedJob | None:
    """queued -> running for this worker, or None if someone else has it (or it ended).
    Raises AtRunningCap when the job must wait for one of its owner's running jobs to end.

    Without `fair`, the job claimed is `request_id`'s. A job with no running cap is
    claimed in one statement. A capped one is claimed under the lock on its owner's claims,
    by a statement that counts what the owner (and its key) runs: two workers claiming the
    same user's jobs take turns, so the cap holds exactly. Three statements, one
    transaction: `executor` must be a unit of work's session (TypeError otherwise).

    With `fair`, the message is a wake-up token for its model: the job claimed is the
    fair-first waiting job of `request_id`'s model, which may be another one. The
    `fair_claim` function (migration 0008) picks it and claims it in one round trip (on a
    session or a connection in autocommit, `Database.one_call`),
    capped or not: for a capped pick it takes the owner's lock, then counts in a snapshot
    taken after it. When nothing may be picked (every waiting job's owner is at a cap, or
    being claimed by another worker), AtRunningCap if a job still waits, so the message is
    offered again; None if none does.

    Times come from the database's clock, never a worker's: leases set here are compared
    by a sweeper that may run on another host.
    """
    params: dict[str, Any] = {
        "request_id": request_id,
        "worker": worker_name,
        "node": node_id,
        "lease": lease,
    }
    if fair is not None:
        return _fair_claim(core_connection(executor), params, fair)
    if not isinstance(executor, Session):
        # Three statements that must share a transaction: a unit of work's session, never a
        # connection in autocommit (`Database.one_call`), where the cap would not hold.
        raise TypeError("the exact claim needs a unit of work's session")
    connection = executor.connection()
    row = connection.execute(_claim_statement(capped=False), params).first()
    if row is None:
        if connection.execute(_lock_capped_statement(), params).first() is None:
            return None
        # Under the lock, in a snapshot taken after it: every claim of this owner committed
        # before is counted. A job cancelled meanwhile is offered again and found ended.
        row = connection.execute(_claim_statement(capped=True), params).first()
        if row is None:
            raise AtRunningCap(request_id)
    return ClaimedJob(*row)


def _fair_claim(connection: Any, params: dict[str, Any], fair: FairShare) -> ClaimedJob | None:
    row = connection.execute(
        _FAIR_CLAIM,
        {
            **params,
            "fair_window": fair.window,
            "fair_aging_s": fair.aging_s,
            "fair_priority_credit": fair.priority_credit,
            "fair_default_weight": fair.default_weight,
        },
    ).one()
    outcome, picked = row[0], row[1]
    if outcome == "claimed":
        return ClaimedJob(*row[2:])
    if outcome == "wait":
        raise AtRunningCap(picked)
    return None


def _waiting() -> Any:
    return (
        (InferenceRequest.id == bindparam("request_id"))
        & (InferenceRequest.status == RequestStatus.QUEUED)
        & InferenceRequest.cancel_requested_at.is_(None)
    )


def _has_cap(table: Any = _REQUESTS) -> Any:
    return table.c.running_cap.is_not(None) | table.c.key_running_cap.is_not(None)


@cache
def _lock_capped_statement() -> Any:
    """If the job is a capped one still waiting: take the lock on its owner's claims (for
    that row only), held until the transaction ends."""
    owner = func.hashtext(func.cast(InferenceRequest.user_id, String))
    return select(func.pg_advisory_xact_lock(RUNNING_LOCK, owner)).where(_waiting(), _has_cap())


def _running(owner: str, value: Any) -> Any:
    """How many jobs with this owner (a user or a key) run now."""
    mine = _REQUESTS.alias("mine")
    return (
        select(func.count())
        .where(mine.c.status == RequestStatus.RUNNING, mine.c[owner] == value)
        .scalar_subquery()
    )


def _below_caps() -> Any:
    """The job's owner, and its key, run fewer jobs than their caps (None: no cap)."""
    cap, key_cap = InferenceRequest.running_cap, InferenceRequest.key_running_cap
    return (cap.is_(None) | (_running("user_id", InferenceRequest.user_id) < cap)) & (
        key_cap.is_(None) | (_running("api_key_id", InferenceRequest.api_key_id) < key_cap)
    )


def _running_values() -> dict[str, Any]:
    """What a claim writes: running for this worker, leased, started now."""
    now = func.now()
    return {
        "status": RequestStatus.RUNNING,
        "worker_name": bindparam("worker"),
        "node_id": bindparam("node"),
        "lease_until": now + bindparam("lease", type_=Interval),
        "started_at": now,
        "dispatched_at": func.coalesce(_REQUESTS.c.dispatched_at, now),
    }


@cache
def _claim_statement(*, capped: bool) -> Any:
    return (
        update(_REQUESTS)
        .where(_waiting(), (_has_cap() & _below_caps()) if capped else ~_has_cap())
        .values(**_running_values())
        .returning(*_CLAIMED_COLUMNS)
    )


# What a claim returns: ClaimedJob's fields, in order.
_CLAIMED_COLUMNS = (
    InferenceRequest.id,
    InferenceRequest.kind,
    InferenceRequest.model_name,
    InferenceRequest.input,
    InferenceRequest.options,
    InferenceRequest.attempt,
    InferenceRequest.queued_at,
    InferenceRequest.started_at,
    InferenceRequest.user_id,
    InferenceRequest.priority,
    InferenceRequest.api_key_id,
)


# The fair claim is a function (migration 0008 has its SQL and says why): one round trip
# for a capped job as for an uncapped one, and its statements planned once per connection.
_FAIR_CLAIM = (
    text(
        "SELECT * FROM fair_claim(:request_id, :worker, :node, :lease, :fair_window,"
        " :fair_aging_s, :fair_priority_credit, :fair_default_weight)"
    )
    .bindparams(
        bindparam("request_id", type_=InferenceRequest.id.type),
        bindparam("node", type_=InferenceRequest.node_id.type),
        bindparam("lease", type_=Interval),
        bindparam("fair_window", type_=Interval),
    )
    .columns(
        column("outcome", String),
        column("picked", InferenceRequest.id.type),
        *(column(c.key, c.type) for c in _CLAIMED_COLUMNS),
    )
)


def ours(request_id: uuid.UUID, worker_name: str, attempt: int) -> Any:
    return (
        (InferenceRequest.id == request_id)
        & (InferenceRequest.status == RequestStatus.RUNNING)
        & (InferenceRequest.worker_name == worker_name)
        & (InferenceRequest.attempt == attempt)
    )


def renew_leases(
    *, session: Session, worker_name: str, jobs: list[tuple[uuid.UUID, int]], lease: timedelta
) -> dict[uuid.UUID, bool]:
    """Extend this worker's claims on `jobs` ((request id, attempt) pairs) in one statement.
    Returns, for each job still ours, whether a cancel was asked for meanwhile (the row is
    the record of it, should the Redis signal have been lost); a job missing from the answer
    was swept or ended, and its worker must stop writing for it."""
    rows = session.execute(
        update(InferenceRequest)
        .where(
            tuple_(InferenceRequest.id, InferenceRequest.attempt).in_(jobs),
            InferenceRequest.status == RequestStatus.RUNNING,
            InferenceRequest.worker_name == worker_name,
        )
        .values(lease_until=func.now() + lease)
        .returning(InferenceRequest.id, InferenceRequest.cancel_requested_at.is_not(None))
    ).all()
    return {row[0]: bool(row[1]) for row in rows}


@dataclass(frozen=True)
class Outcome:
    status: RequestStatus
    output: str
    done_reason: str | None = None
    metrics: dict[str, int | None] | None = None
    output_message: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None


METRIC_COLUMNS = (
    "prompt_eval_count",
    "eval_count",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
)


def finish(
    *,
    executor: Executor,
    job: ClaimedJob,
    worker_name: str,
    outcome: Outcome,
    first_token_at: datetime | None = None,
) -> bool:
    """Write the result once, if the job is still ours, and only then count it in the day's
    usage (its model's, its owner's tokens, its API key's): one call of the finish_job()
    function (migration 0012), one round trip, its statements planned once per
    connection."""
    metrics = outcome.metrics or {}
    params = {
        "request_id": job.id,
        "worker": worker_name,
        "attempt": job.attempt,
        "status": str(outcome.status),
        "output": outcome.output,
        "output_message": outcome.output_message,
        "done_reason": outcome.done_reason,
        "error": outcome.error,
        "error_code": outcome.error_code,
        "first_token_at": first_token_at,
        **{f"m_{name}": metrics.get(name) for name in METRIC_COLUMNS},
        "day": utcnow().date(),
        **{f"u_{name}": value for name, value in _usage_counts(job, outcome).items()},
    }
    return bool(core_connection(executor).execute(_FINISH, params).scalar())


USAGE_COUNTS = (
    "requests",
    "completed",
    "errors",
    "cancelled",
    "prompt_tokens",
    "completion_tokens",
    "total_duration_ns",
    "queue_wait_ms",
)


def _usage_counts(job: ClaimedJob, outcome: Outcome) -> dict[str, int]:
    metrics = outcome.metrics or {}
    return {
        "requests": 1,
        "completed": int(outcome.status == RequestStatus.COMPLETED),
        "errors": int(outcome.status == RequestStatus.FAILED),
        "cancelled": int(outcome.status == RequestStatus.CANCELLED),
        "prompt_tokens": int(metrics.get("prompt_eval_count") or 0),
        "completion_tokens": int(metrics.get("eval_count") or 0),
        "total_duration_ns": int(metrics.get("total_duration") or 0),
        "queue_wait_ms": int((job.started_at - job.queued_at).total_seconds() * 1000),
    }


def _finish_call() -> Any:
    """SELECT finish_job(...), each parameter cast to the type the function declares, in
    the order it declares them (`finish` above names them)."""
    table = InferenceRequest.__table__
    job_columns = (
        ("request_id", "id"),
        ("worker", "worker_name"),
        ("attempt", "attempt"),
        ("status", "status"),
        ("output", "output"),
        ("output_message", "output_message"),
        ("done_reason", "done_reason"),
        ("error", "error"),
        ("error_code", "error_code"),
        ("first_token_at", "first_token_at"),
        *((f"m_{name}", name) for name in METRIC_COLUMNS),
    )
    typed = [(name, _as_parameter(table.c[column].type)) for name, column in job_columns]
    typed.append(("day", Date()))
    typed += [(f"u_{name}", BigInteger()) for name in USAGE_COUNTS]
    dialect = postgresql.dialect()
    casts = ", ".join(f"CAST(:{name} AS {type_.compile(dialect=dialect)})" for name, type_ in typed)
    binds = [bindparam(name, type_=type_) for name, type_ in typed]
    return text(f"SELECT finish_job({casts})").bindparams(*binds)


def _as_parameter(column_type: Any) -> Any:
    """A column's type as finish_job() takes it. Strings as plain VARCHAR, not VARCHAR(n): a
    cast to VARCHAR(n) cuts a longer value short without a word, where the column refuses it
    (as the update always did). JSONB with SQL NULL for no message (not JSON null)."""
    if type(column_type) is String:
        return String()
    if isinstance(column_type, JSONB):
        return JSONB(none_as_null=True)
    return column_type


_FINISH = _finish_call()


def cancel(*, session: Session, request_id: uuid.UUID) -> str | None:
    """One statement for both cases: a queued job becomes `cancelled` at once; a running one
    is marked, and its worker stops it. Returns the status after the change ("cancelled" or
    "running"), or None if the job had already ended."""
    was_queued = InferenceRequest.status == RequestStatus.QUEUED
    row = session.execute(
        update(InferenceRequest)
        .where(
            InferenceRequest.id == request_id,
            InferenceRequest.status.in_([RequestStatus.QUEUED, RequestStatus.RUNNING]),
        )
        .values(
            status=case((was_queued, RequestStatus.CANCELLED), else_=InferenceRequest.status),
            completed_at=case((was_queued, func.now()), else_=InferenceRequest.completed_at),
            done_reason=case((was_queued, "cancelled"), else_=InferenceRequest.done_reason),
            cancel_requested_at=func.now(),
        )
        .returning(InferenceRequest.status)
    ).first()
    return str(row[0]) if row else None
