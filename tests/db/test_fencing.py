"""Fencing, pinned directly: once a job's lease was swept and the job claimed again, nothing
the earlier attempt does reaches the row. Each test walks the real functions (claim, the
sweeper, claim again) rather than editing the row into shape, then has the stale attempt
finish, renew and hand back, and compares every column of the row, and the model's usage
row for the day, before and after.

What tests/db/test_inference_sql.py and test_request_lifecycle.py pin already, and this
module does not repeat:
- finish, hand_back and renew_leases refuse a job whose row was edited to another worker,
  another attempt, `queued` or an end (`test_a_job_no_longer_ours_is_neither_written_nor_
  counted`, `test_handing_back_a_job_no_longer_ours_changes_nothing`, `test_renewing_extends_
  our_leases_and_reports_cancels`); they check the output and the usage, not every column;
- a second finish of the same attempt is not counted twice (`test_finish_writes_the_result_
  once_and_counts_it_once`; it does not look at the row);
- the sweeper's own decisions (requeue with attempt + 1, cancel, fail after the last
  attempt, skip locked rows) and a claim taking a queued job once.

All of it runs in one transaction, so now() is one instant: a lease runs out by moving
`lease_until` a second into the past.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.inference import ClaimedJob, Outcome, cancel, claim, finish, renew_leases
from db.models import InferenceRequest, ModelUsageStats, RequestStatus
from db.recovery import hand_back, requeue_expired_leases
from tests.factories import InferenceRequestFactory

LEASE = timedelta(seconds=30)
MODEL = "fence:latest"  # a model of its own: the usage row is this module's alone
A, B = "gpu0@host-a", "gpu0@host-b"

LATE = Outcome(
    status=RequestStatus.COMPLETED,
    output="the stale attempt's answer",
    done_reason="stop",
    metrics={"prompt_eval_count": 5, "eval_count": 7, "total_duration": 900},
)
LIVE = Outcome(
    status=RequestStatus.COMPLETED,
    output="the live attempt's answer",
    done_reason="stop",
    metrics={"prompt_eval_count": 5, "eval_count": 9, "total_duration": 1_200},
)


def _row(session: Session, request_id: uuid.UUID) -> dict[str, Any]:
    """Every column of the job's row, as the database has it now."""
    table = InferenceRequest.__table__
    row = session.execute(select(table).where(table.c.id == request_id)).mappings().one()
    return dict(row)


def _usage(session: Session) -> list[dict[str, Any]]:
    table = ModelUsageStats.__table__
    rows = session.execute(select(table).where(table.c.model_name == MODEL)).mappings().all()
    return [dict(row) for row in rows]


def _claim(session: Session, request_id: uuid.UUID, worker: str) -> ClaimedJob:
    job = claim(
        executor=session, request_id=request_id, worker_name=worker, node_id=None, lease=LEASE
    )
    assert job is not None
    return job


def _renew(session: Session, worker: str, *jobs: tuple[uuid.UUID, int]) -> dict[uuid.UUID, bool]:
    return renew_leases(session=session, worker_name=worker, jobs=list(jobs), lease=LEASE)


def _lease_runs_out(session: Session, request_id: uuid.UUID) -> None:
    session.execute(
        text(
            "UPDATE inference_requests SET lease_until = now() - interval '1 second' WHERE id = :id"
        ),
        {"id": request_id},
    )


def _sweep(session: Session, max_attempts: int = 3) -> str:
    [swept] = requeue_expired_leases(session=session, max_attempts=max_attempts)
    return swept.status


def _claimed_and_lapsed(session: Session) -> ClaimedJob:
    """Attempt 1, claimed by worker A, whose lease has run out (the next sweep takes it).
    Returns attempt 1's claim, which the worker keeps using."""
    job = InferenceRequestFactory(model_name=MODEL)
    stale = _claim(session, job.id, A)
    assert stale.attempt == 1
    _lease_runs_out(session, job.id)
    return stale


def _everything_the_stale_attempt_does_is_refused(
    session: Session, stale: ClaimedJob, worker: str = A
) -> None:
    """finish, renew and hand back for `stale` are all refused, and the row and the day's
    usage are exactly as they were."""
    before, usage_before = _row(session, stale.id), _usage(session)
    assert not finish(executor=session, job=stale, worker_name=worker, outcome=LATE)
    assert _renew(session, worker, (stale.id, stale.attempt)) == {}
    assert hand_back(session=session, job=stale, worker_name=worker) is None
    assert _row(session, stale.id) == before
    assert _usage(session) == usage_before


@pytest.mark.parametrize("again_by", [A, B], ids=["same-worker-name", "another-worker"])
def test_a_swept_attempt_is_fenced_off_and_the_live_attempt_wins(
    db_session: Session, again_by: str
) -> None:
    stale = _claimed_and_lapsed(db_session)
    assert _sweep(db_session) == "queued"
    live = _claim(db_session, stale.id, again_by)
    assert (live.attempt, _row(db_session, stale.id)["worker_name"]) == (2, again_by)

    # Same worker name or not, attempt 1's claim is not attempt 2's.
    _everything_the_stale_attempt_does_is_refused(db_session, stale)

    # The live attempt still holds the job: its renewal and its finish go through.
    assert _renew(db_session, again_by, (live.id, 2)) == {live.id: False}
    assert finish(executor=db_session, job=live, worker_name=again_by, outcome=LIVE)
    done = _row(db_session, live.id)
    assert (done["status"], done["attempt"], done["worker_name"]) == ("completed", 2, again_by)
    assert (done["output"], done["eval_count"]) == (LIVE.output, 9)
    [usage] = _usage(db_session)
    assert (usage["requests"], usage["completed"], usage["completion_tokens"]) == (1, 1, 9)

    # And after the job has ended, the stale attempt is still refused everything.
    _everything_the_stale_attempt_does_is_refused(db_session, stale)


def test_a_swept_attempt_is_fenced_off_while_the_job_waits_for_its_next_claim(
    db_session: Session,
) -> None:
    stale = _claimed_and_lapsed(db_session)
    assert _sweep(db_session) == "queued"
    _everything_the_stale_attempt_does_is_refused(db_session, stale)
    assert _row(db_session, stale.id)["status"] == "queued"
    assert _claim(db_session, stale.id, B).attempt == 2  # the stale attempt took nothing


def test_attempt_one_is_fenced_off_from_attempt_three(db_session: Session) -> None:
    """Two sweeps later, the first attempt and the second are both stale."""
    first = _claimed_and_lapsed(db_session)
    assert _sweep(db_session) == "queued"
    second = _claim(db_session, first.id, A)
    _lease_runs_out(db_session, first.id)
    assert _sweep(db_session) == "queued"
    third = _claim(db_session, first.id, A)
    assert (second.attempt, third.attempt) == (2, 3)

    before = _row(db_session, first.id)
    for stale in (first, second):
        assert not finish(executor=db_session, job=stale, worker_name=A, outcome=LATE)
        assert hand_back(session=db_session, job=stale, worker_name=A) is None
    assert _renew(db_session, A, (first.id, 1), (first.id, 2)) == {}
    assert _row(db_session, first.id) == before
    assert _usage(db_session) == []
    assert finish(executor=db_session, job=third, worker_name=A, outcome=LIVE)


@pytest.mark.parametrize(
    ("cancel_asked", "max_attempts", "ended"),
    [(True, 3, "cancelled"), (False, 1, "failed")],
    ids=["cancel-asked-before-it-died", "its-last-attempt"],
)
def test_a_finish_after_the_sweeper_ended_the_job_is_refused(
    db_session: Session, cancel_asked: bool, max_attempts: int, ended: str
) -> None:
    stale = _claimed_and_lapsed(db_session)
    if cancel_asked:
        assert cancel(session=db_session, request_id=stale.id) == "running"
    assert _sweep(db_session, max_attempts=max_attempts) == ended
    _everything_the_stale_attempt_does_is_refused(db_session, stale)
    assert _row(db_session, stale.id)["status"] == ended


def test_a_cancelled_queued_job_refuses_a_late_finish(db_session: Session) -> None:
    """Swept, queued again, then cancelled by its owner before anyone claimed it."""
    stale = _claimed_and_lapsed(db_session)
    assert _sweep(db_session) == "queued"
    assert cancel(session=db_session, request_id=stale.id) == "cancelled"
    _everything_the_stale_attempt_does_is_refused(db_session, stale)
    assert _row(db_session, stale.id)["status"] == "cancelled"


def test_a_cancel_does_not_fence_the_running_attempt_but_its_end_does(
    db_session: Session,
) -> None:
    """A cancel asked of a running job only marks it: the attempt that holds it still
    writes its (cancelled) result once; after that, nothing more."""
    job = InferenceRequestFactory(model_name=MODEL)
    mine = _claim(db_session, job.id, A)
    assert cancel(session=db_session, request_id=job.id) == "running"
    assert _renew(db_session, A, (mine.id, 1)) == {mine.id: True}
    stopped = Outcome(status=RequestStatus.CANCELLED, output="half", done_reason="cancelled")
    assert finish(executor=db_session, job=mine, worker_name=A, outcome=stopped)
    assert _row(db_session, job.id)["status"] == "cancelled"
    _everything_the_stale_attempt_does_is_refused(db_session, mine)


def test_a_second_finish_of_the_same_attempt_changes_nothing(db_session: Session) -> None:
    """A duplicate task or a retried finish, even with another outcome: the first stands,
    column for column, and is counted once."""
    job = InferenceRequestFactory(model_name=MODEL)
    mine = _claim(db_session, job.id, A)
    assert finish(executor=db_session, job=mine, worker_name=A, outcome=LIVE)
    first, usage = _row(db_session, job.id), _usage(db_session)

    failed = Outcome(
        status=RequestStatus.FAILED, output="", error="boom", error_code="engine_error"
    )
    for outcome in (LIVE, failed):
        assert not finish(executor=db_session, job=mine, worker_name=A, outcome=outcome)
    assert _row(db_session, job.id) == first
    assert _usage(db_session) == usage


def test_a_handed_back_attempt_is_fenced_off_from_the_next_claim(db_session: Session) -> None:
    """A stopping worker hands the job back; the same worker name (a restart) claims it
    again: the handed-back attempt can no longer write."""
    job = InferenceRequestFactory(model_name=MODEL)
    first = _claim(db_session, job.id, A)
    assert hand_back(session=db_session, job=first, worker_name=A) == "queued"
    _everything_the_stale_attempt_does_is_refused(db_session, first)
    second = _claim(db_session, job.id, A)
    assert second.attempt == 2
    _everything_the_stale_attempt_does_is_refused(db_session, first)
    assert finish(executor=db_session, job=second, worker_name=A, outcome=LIVE)
