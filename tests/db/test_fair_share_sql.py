"""The fair claim in SQL (db/inference.py, docs/pipeline.md "Fair share"): a message of a
model claims the fair-first waiting job of that model, which may be another one. Orders
are asserted from which job each claim takes; times are inputs here (how long ago a job was
queued or started), never measured."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from db.inference import AtRunningCap, ClaimedJob, FairShare, claim
from db.models import InferenceRequest, User
from tests.factories import InferenceRequestFactory, UserFactory

MODEL = "fair-model:latest"
# Enough of an owner's starts that reading them shows above a claim's other reads.
STARTS = 40
FAIR = FairShare(
    window=timedelta(seconds=300), aging_s=60.0, priority_credit=0.5, default_weight=1.0
)


def _ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def _queued(user: User | None, *, waited_s: float = 0.0, **fields: Any) -> InferenceRequest:
    return InferenceRequestFactory(
        user_id=user.id if user else None,
        model_name=MODEL,
        status="queued",
        queued_at=_ago(waited_s),
        **fields,
    )


def _started(user: User, count: int, *, ago_s: float = 30.0, status: str = "completed") -> None:
    for _ in range(count):
        InferenceRequestFactory(
            user_id=user.id,
            model_name=MODEL,
            status=status,
            queued_at=_ago(ago_s + 1),
            started_at=_ago(ago_s),
            lease_until=_ago(-30) if status == "running" else None,
            worker_name="w" if status == "running" else None,
        )


def _claim(session: Session, message: InferenceRequest, fair: FairShare | None = FAIR) -> Any:
    return claim(
        executor=session,
        request_id=message.id,
        worker_name="w",
        node_id=None,
        lease=timedelta(seconds=30),
        fair=fair,
    )


def _order(session: Session, message: InferenceRequest, count: int) -> list[uuid.UUID]:
    taken = []
    for _ in range(count):
        job: ClaimedJob | None = _claim(session, message)
        assert job is not None
        taken.append(job.id)
    return taken


def test_a_newcomer_goes_before_a_user_with_recent_starts(db_session: Session) -> None:
    flooder, newcomer = UserFactory(), UserFactory()
    _started(flooder, 3)
    flood = [_queued(flooder, waited_s=20 - i) for i in range(10)]
    late = [_queued(newcomer, waited_s=1 - i * 0.1) for i in range(2)]
    # The flooder's oldest message wakes the worker: the newcomer's jobs start first.
    assert _order(db_session, flood[0], 2) == [job.id for job in late]
    # Then the flooder's, oldest first.
    assert _claim(db_session, flood[0]).id == flood[0].id


def test_five_behind_a_thousand_all_start_before_the_floods_next_five(
    db_session: Session,
) -> None:
    flooder, other = UserFactory(), UserFactory()
    _started(flooder, 2, status="running")
    flood = [_queued(flooder, waited_s=60 - i * 0.01) for i in range(1000)]
    five = {_queued(other, waited_s=0.5 - i * 0.01).id for i in range(5)}
    taken = _order(db_session, flood[500], 10)
    flood_ids = {job.id for job in flood}
    assert set(taken) >= five
    # The other user's fifth start comes before the flood's fifth after their arrival.
    fifth_other = max(taken.index(job_id) for job_id in five)
    fifth_flood = [i for i, job_id in enumerate(taken) if job_id in flood_ids][4]
    assert fifth_other < fifth_flood


def test_jobs_running_since_before_the_window_count_as_starts(db_session: Session) -> None:
    long_runner, other = UserFactory(), UserFactory()
    _started(long_runner, 2, ago_s=600, status="running")  # started 10 min ago, still on
    _started(other, 1)  # one start in the window
    mine = _queued(long_runner, waited_s=5)
    theirs = _queued(other, waited_s=1)
    assert _claim(db_session, mine).id == theirs.id


def test_starts_are_counted_up_to_a_bound(db_session: Session) -> None:
    """Past 1,000 (MAX_COUNTED_STARTS, migration 0008) an owner's count stops growing (the
    claim's cost stays bounded): two owners beyond it are alike, and the older waiting job
    goes first."""
    heavier, heavy = UserFactory(), UserFactory()
    db_session.flush()
    for user, starts in ((heavier, 1500), (heavy, 1010)):
        db_session.execute(
            text(
                "INSERT INTO inference_requests"
                " (user_id, model_name, kind, input, status, queued_at, started_at)"
                " SELECT :user, :model, 'generate', '{}'::jsonb, 'completed',"
                " now() - interval '2 minutes', now() - interval '1 minute'"
                " FROM generate_series(1, :starts)"
            ),
            {"user": user.id, "model": MODEL, "starts": starts},
        )
    older = _queued(heavier, waited_s=3)
    newer = _queued(heavy, waited_s=1)
    assert _claim(db_session, newer).id == older.id


def _rows_read(session: Session) -> int:
    """Rows of inference_requests read so far in this transaction, by any plan: sequential
    scans and every index's entries (which index the count uses is the planner's choice,
    and a function's cached plan can change with the connection's history)."""
    read = session.execute(
        text(
            "SELECT pg_stat_get_xact_tuples_returned('inference_requests'::regclass)"
            " + (SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index"
            "    WHERE indrelid = 'inference_requests'::regclass)"
        )
    )
    return int(read.scalar_one())


def test_starts_are_counted_only_when_owners_compete(db_session: Session) -> None:
    """The count orders owners: an owner waiting alone is first without it, and its claim
    reads none of its starts (migration 0010); a second owner waiting brings the count back,
    and with it at least one row read per start."""
    busy, other = UserFactory(), UserFactory()
    _started(busy, STARTS)
    first, second = _queued(busy, waited_s=3), _queued(busy, waited_s=2)
    before = _rows_read(db_session)
    assert _claim(db_session, first).id == first.id
    alone = _rows_read(db_session) - before
    theirs = _queued(other, waited_s=1)
    before = _rows_read(db_session)
    assert _claim(db_session, second).id == theirs.id  # STARTS + 1 starts against none
    competing = _rows_read(db_session) - before
    assert competing - alone >= STARTS, (alone, competing)


def test_within_a_user_priority_then_age(db_session: Session) -> None:
    user = UserFactory()
    old_low = _queued(user, waited_s=30, priority=3)
    new_high = _queued(user, waited_s=1, priority=7)
    old_high = _queued(user, waited_s=5, priority=7)
    assert _order(db_session, old_low, 3) == [old_high.id, new_high.id, old_low.id]


def test_weights_share_starts_in_proportion(db_session: Session) -> None:
    heavy, light = UserFactory(fair_share_weight=3.0), UserFactory()
    _started(heavy, 2)  # 2 / 3 starts per weight
    _started(light, 1)  # 1 / 1
    heavy_job = _queued(heavy, waited_s=1)
    light_job = _queued(light, waited_s=1)
    assert _claim(db_session, light_job).id == heavy_job.id


def test_waiting_earns_credit_so_nothing_starves(db_session: Session) -> None:
    busy, fresh = UserFactory(), UserFactory()
    _started(busy, 2)
    old = _queued(busy, waited_s=200)  # 2 starts - 200 / 60 of credit < 0
    new = _queued(fresh, waited_s=0)
    assert _claim(db_session, new).id == old.id


@pytest.mark.parametrize(("starts", "urgent_first"), [(1, True), (3, False)])
def test_priority_across_users_is_worth_a_bounded_number_of_starts(
    db_session: Session, starts: int, urgent_first: bool
) -> None:
    urgent, plain = UserFactory(), UserFactory()
    _started(urgent, starts + 2)  # priority 9 is worth 4 x 0.5 = 2 starts
    _started(plain, 2)
    high = _queued(urgent, waited_s=1, priority=9)
    normal = _queued(plain, waited_s=1, priority=5)
    first = _claim(db_session, normal).id
    assert first == (high.id if urgent_first else normal.id)


def test_an_owner_at_their_cap_is_passed_over(db_session: Session) -> None:
    capped, other = UserFactory(), UserFactory()
    _started(other, 5)
    _started(capped, 1, status="running")
    held = _queued(capped, waited_s=10, running_cap=1)
    free = _queued(other, waited_s=1, running_cap=4)
    # The capped owner's score is better, but they run their cap: the other job starts.
    assert _claim(db_session, held).id == free.id
    # Nothing else may start: the message is offered again, the held job still waits.
    with pytest.raises(AtRunningCap):
        _claim(db_session, held)
    db_session.refresh(held)
    assert held.status == "queued"


def test_a_capped_pick_below_its_cap_is_claimed(db_session: Session) -> None:
    user = UserFactory()
    job = _queued(user, running_cap=2)
    claimed = _claim(db_session, job)
    assert claimed.id == job.id


def test_no_waiting_job_drops_the_message(db_session: Session) -> None:
    job = _queued(UserFactory())
    assert _claim(db_session, job).id == job.id
    assert _claim(db_session, job) is None


def test_cancel_asked_and_other_models_are_not_picked(db_session: Session) -> None:
    user, other = UserFactory(), UserFactory()
    _started(user, 3)
    mine = _queued(user)
    _queued(other, cancel_requested_at=_ago(0))
    InferenceRequestFactory(user_id=other.id, model_name="elsewhere", status="queued")
    assert _claim(db_session, mine).id == mine.id


def test_jobs_of_erased_accounts_are_one_owner(db_session: Session) -> None:
    orphan = _queued(None, waited_s=5)
    user = UserFactory()
    _started(user, 1)
    mine = _queued(user)
    assert _claim(db_session, mine).id == orphan.id


def test_off_claims_the_messages_own_job(db_session: Session) -> None:
    flooder, newcomer = UserFactory(), UserFactory()
    _started(flooder, 3)
    flood = _queued(flooder, waited_s=10)
    _queued(newcomer)
    assert _claim(db_session, flood, fair=None).id == flood.id
