"""The quotas in db/inference.py's statements, with two connections racing as two web
processes (or two workers) would: the second admission or capped claim of a user waits for
the first to commit, then counts it. Without the lock each would count in a snapshot that
misses the other's uncommitted job, and both would pass. Waiting is observed in
pg_stat_activity (a backend waiting on an advisory lock), never timed."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from db.base import utcnow
from db.inference import (
    Admission,
    AtRunningCap,
    FairShare,
    NewRequest,
    Outcome,
    claim,
    finish,
    insert_if_servable,
)
from db.models import (
    ApiKey,
    ApiKeyTokenUsage,
    InferenceRequest,
    RequestStatus,
    User,
    UserTokenUsage,
)
from db.session import Database
from tests.conftest import make_committed_user

LEASE = timedelta(seconds=30)


@pytest.fixture
def user(committed: Database) -> User:
    return make_committed_user(committed)


def _new(user_id: uuid.UUID, **fields: Any) -> NewRequest:
    return NewRequest(
        id=uuid.uuid4(),
        user_id=user_id,
        model_name="nobody-serves-it",
        kind="generate",
        source="api",
        input={"prompt": "hi"},
        options={},
        priority=5,
        idempotency_key=None,
        request_hash="h",
        **fields,
    )


def _admit(session: Any, new: NewRequest, **limits: Any) -> Any:
    return insert_if_servable(
        executor=session,
        new=new,
        stale_after=timedelta(seconds=30),
        queue_while_unavailable=True,
        admission=Admission(day=utcnow().date(), **limits),
    )


def _waiting_on_a_lock(database: Database, count: int = 1) -> None:
    """Until `count` other backends wait on an advisory lock (bounded: 10 s)."""
    deadline = threading.Event()
    timer = threading.Timer(10, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            with database.engine.connect() as connection:
                waiting = connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
                        # Another suite's workers may wait on theirs (tests/lanes.py).
                        " AND datname = current_database()"
                    )
                )
            if waiting >= count:
                return
            deadline.wait(0.02)
        raise AssertionError("no backend ever waited on the advisory lock")
    finally:
        timer.cancel()


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_second_admission_waits_for_the_first_and_counts_its_job(
    committed: Database, user: User
) -> None:
    first = committed.session_factory()
    try:
        assert _admit(first, _new(user.id), max_queued_jobs=1) is not None  # not yet committed

        def second() -> Any:
            with committed.unit_of_work() as session:
                return _admit(session, _new(user.id), max_queued_jobs=1)

        thread, outcome = _in_thread(second)
        _waiting_on_a_lock(committed)
        first.commit()
    finally:
        first.close()
    thread.join(10)

    assert outcome == {"value": None}  # refused: it saw the first job once it could go on


def test_admissions_of_different_users_do_not_wait_for_each_other(
    committed: Database, user: User
) -> None:
    other = make_committed_user(committed)
    first = committed.session_factory()
    try:
        assert _admit(first, _new(user.id), max_queued_jobs=1) is not None
        with committed.unit_of_work() as session:  # would hang here if it waited
            assert _admit(session, _new(other.id), max_queued_jobs=1) is not None
    finally:
        first.rollback()
        first.close()


def test_a_keys_waiting_jobs_are_counted_apart_from_its_owners(
    committed: Database, user: User
) -> None:
    with committed.unit_of_work() as session:
        key = ApiKey(user_id=user.id, name="k", prefix=uuid.uuid4().hex[:12], key_hash="x")
        session.add(key)
    with committed.unit_of_work() as session:
        assert _admit(session, _new(user.id, api_key_id=key.id), key_max_queued_jobs=1)
        assert _admit(session, _new(user.id, api_key_id=key.id), key_max_queued_jobs=1) is None
        assert _admit(session, _new(user.id), key_max_queued_jobs=1) is not None  # no key
        assert _admit(session, _new(user.id), max_queued_jobs=3) is not None
        assert _admit(session, _new(user.id), max_queued_jobs=3) is None


def test_the_days_tokens_refuse_at_the_limit_and_count_only_that_day(
    committed: Database, user: User
) -> None:
    today = utcnow().date()
    with committed.unit_of_work() as session:
        session.add(UserTokenUsage(user_id=user.id, day=date(2020, 1, 1), tokens=10**9, jobs=1))
        session.add(UserTokenUsage(user_id=user.id, day=today, tokens=99, jobs=1))
    with committed.unit_of_work() as session:
        assert _admit(session, _new(user.id), tokens_per_day=100) is not None
        session.execute(
            update(UserTokenUsage)
            .where(UserTokenUsage.user_id == user.id, UserTokenUsage.day == today)
            .values(tokens=100)
        )
        assert _admit(session, _new(user.id), tokens_per_day=100) is None
        assert _admit(session, _new(user.id), tokens_per_day=101) is not None


def _queued(committed: Database, user: User, count: int, **caps: Any) -> list[uuid.UUID]:
    ids = []
    with committed.unit_of_work() as session:
        for _ in range(count):
            new = _new(user.id, **caps)
            _admit(session, new)
            ids.append(new.id)
    return ids


def _claim(
    session: Any, job_id: uuid.UUID, worker: str = "w@test", fair: FairShare | None = None
) -> Any:
    return claim(
        executor=session,
        request_id=job_id,
        worker_name=worker,
        node_id=None,
        lease=LEASE,
        fair=fair,
    )


FAIR = FairShare(
    window=timedelta(seconds=300), aging_s=60.0, priority_credit=0.5, default_weight=1.0
)


# The fair claim (one call of fair_claim()) picks the next job itself: the second claim's
# pick skips the first's locked row, takes the owner's lock, and counts after it.
@pytest.mark.parametrize("fair", [None, FAIR], ids=["exact", "fair"])
def test_a_capped_claim_waits_for_the_owners_other_claim_then_holds_the_job(
    fair: FairShare | None, committed: Database, user: User
) -> None:
    one, two = _queued(committed, user, 2, running_cap=1)
    first = committed.session_factory()
    try:
        held = _claim(first, one, fair=fair)  # running, not yet committed
        assert held is not None
        left = two if held.id == one else one  # the fair claim takes the older (by id)

        def second() -> Any:
            with committed.unit_of_work() as session:
                return _claim(session, two, "w2@test", fair=fair)

        thread, outcome = _in_thread(second)
        _waiting_on_a_lock(committed)
        first.commit()
    finally:
        first.close()
    thread.join(10)

    assert isinstance(outcome.get("error"), AtRunningCap)
    with committed.unit_of_work() as session:
        assert session.get(InferenceRequest, left).status == RequestStatus.QUEUED  # type: ignore[union-attr]


def test_a_held_job_is_claimed_once_a_running_one_ends(committed: Database, user: User) -> None:
    one, two = _queued(committed, user, 2, running_cap=1)
    with committed.unit_of_work() as session:
        job = _claim(session, one)
    with committed.unit_of_work() as session, pytest.raises(AtRunningCap):
        _claim(session, two)
    with committed.unit_of_work() as session:
        outcome = Outcome(
            RequestStatus.COMPLETED, "ok", metrics={"prompt_eval_count": 3, "eval_count": 4}
        )
        assert finish(executor=session, job=job, worker_name="w@test", outcome=outcome)
    with committed.unit_of_work() as session:
        assert _claim(session, two) is not None
        spent = session.get(UserTokenUsage, (user.id, utcnow().date()))
        assert spent is not None
        assert (spent.tokens, spent.jobs) == (7, 1)


def test_a_keys_running_cap_counts_the_keys_jobs_only(committed: Database, user: User) -> None:
    with committed.unit_of_work() as session:
        key = ApiKey(user_id=user.id, name="k", prefix=uuid.uuid4().hex[:12], key_hash="x")
        session.add(key)
    (by_key,) = _queued(committed, user, 1, api_key_id=key.id, key_running_cap=1)
    (also_by_key,) = _queued(committed, user, 1, api_key_id=key.id, key_running_cap=1)
    (by_login,) = _queued(committed, user, 1, running_cap=5)
    with committed.unit_of_work() as session:
        job = _claim(session, by_key)
        assert job.api_key_id == key.id
    with committed.unit_of_work() as session, pytest.raises(AtRunningCap):
        _claim(session, also_by_key)
    with committed.unit_of_work() as session:
        assert _claim(session, by_login) is not None
    with committed.unit_of_work() as session:
        outcome = Outcome(
            RequestStatus.COMPLETED, "ok", metrics={"prompt_eval_count": 2, "eval_count": 2}
        )
        assert finish(executor=session, job=job, worker_name="w@test", outcome=outcome)
        assert (
            session.scalar(
                select(ApiKeyTokenUsage.tokens).where(ApiKeyTokenUsage.api_key_id == key.id)
            )
            == 4
        )


def test_an_uncapped_claim_is_one_statement_and_ignores_running_jobs(
    committed: Database, user: User
) -> None:
    ids = _queued(committed, user, 3)
    for job_id in ids:
        with committed.unit_of_work() as session:
            assert _claim(session, job_id) is not None


def test_a_cancelled_or_taken_capped_job_is_not_claimed(committed: Database, user: User) -> None:
    (job_id,) = _queued(committed, user, 1, running_cap=2)
    with committed.unit_of_work() as session:
        assert _claim(session, job_id) is not None
    with committed.unit_of_work() as session:
        assert _claim(session, job_id, "w2@test") is None  # already running: not "held"
