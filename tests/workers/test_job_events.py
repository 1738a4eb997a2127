"""A running job's events through a Redis outage (workers/job_events.py), on real Redis.

An unreachable Redis is a client pointed at a port where nothing listens (the refusal a
restarting Redis gives); the events then go to the test's Redis once it "returns". The
lost reply (Redis ran the publish, the connection broke before its answer) is a batch
published once and then sent again: the marks make the second one a no-op.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from redis import Redis

from tests.conftest import free_port
from workers import job_events
from workers.events import Event, EventLog, event, worker_redis
from workers.job_events import Backlog, EventsOnHold, JobEvents


@pytest.fixture
def log(redis_client: Redis) -> EventLog:
    return EventLog(redis_client, ttl_s=60)


@pytest.fixture
def away() -> EventLog:
    """Redis as a restarting one answers: connection refused, at once."""
    return EventLog(worker_redis(f"redis://127.0.0.1:{free_port()}/0", 0.5), ttl_s=60)


def texts(log: EventLog, request_id: uuid.UUID) -> list[tuple[int, str]]:
    return [(e["seq"], e.get("text") or e.get("status")) for e in log.replay(request_id)]


def test_events_held_during_an_outage_go_out_in_order_and_numbered_when_redis_returns(
    log: EventLog, away: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_events, "RETRY_S", 0.0)
    request_id = uuid.uuid4()
    job = JobEvents(log, Backlog(log, keep_s=60), request_id, attempt=1, hold_s=30)
    job.publish("status", status="running", attempt=1)
    job.publish("token", text="a", attempt=1)

    job.events = away  # Redis goes away
    job.publish("token", text="b", attempt=1)
    job.publish("token", text="c", attempt=1)
    assert len(job.held) == 2
    assert job.down_since is not None

    job.events = log  # and comes back: the next publish takes the held ones first
    job.publish("token", text="d", attempt=1)
    assert job.held == []
    assert job.down_since is None
    assert texts(log, request_id) == [(1, "running"), (2, "a"), (3, "b"), (4, "c"), (5, "d")]


def test_an_event_whose_reply_was_lost_is_not_published_twice(log: EventLog) -> None:
    request_id = uuid.uuid4()
    marked = [
        Event(request_id, "token", {"text": "a", "attempt": 1}, "1:1"),
        Event(request_id, "token", {"text": "b", "attempt": 1}, "1:2"),
    ]
    log.publish_many(marked[:1])  # it ran; the worker never heard back
    # Sent again with what followed: the one the stream holds is skipped (seq 0).
    assert log.publish_many(marked, once=True) == [0, 2]
    assert log.publish_many(marked, once=True) == [0, 0]
    # Another attempt's marks are its own: attempt 2's first event is new.
    again = Event(request_id, "token", {"text": "c", "attempt": 2}, "2:1")
    assert log.publish_many([again], once=True) == [3]
    assert texts(log, request_id) == [(1, "a"), (2, "b"), (3, "c")]


def test_a_running_job_gives_up_after_the_hold_bound(
    log: EventLog, away: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_events, "RETRY_S", 0.0)
    job = JobEvents(away, Backlog(log, keep_s=60), uuid.uuid4(), attempt=1, hold_s=0.2)
    job.publish("token", text="held", attempt=1)  # the outage starts: held, no error
    time.sleep(0.3)
    with pytest.raises(EventsOnHold):
        job.publish("token", text="too late", attempt=1)


def test_between_tries_the_runner_is_told_to_keep_its_text(log: EventLog, away: EventLog) -> None:
    job = JobEvents(away, Backlog(log, keep_s=60), uuid.uuid4(), attempt=1, hold_s=30)
    assert job.ready()
    job.publish("token", text="a", attempt=1)
    assert not job.ready()  # the next try is RETRY_S away: no event per token meanwhile


def test_the_last_events_of_a_job_ended_during_an_outage_wait_in_the_backlog(
    log: EventLog, away: EventLog, redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_events, "RETRY_S", 0.05)
    request_id = uuid.uuid4()
    backlog = Backlog(away, keep_s=60)
    job = JobEvents(away, backlog, request_id, attempt=1, hold_s=30)
    job.publish("token", text="a", attempt=1)
    redis_client.set("omx:test:cancel-flag", "1")
    final = [event(request_id, "status", status="completed", attempt=1)]
    job.finish(final, delete=["omx:test:cancel-flag"])  # never raises
    assert job.held == []
    assert len(backlog) == 1

    backlog.events = log  # Redis returns
    deadline = time.monotonic() + 5
    while len(backlog) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert texts(log, request_id) == [(1, "a"), (2, "completed")]
    assert redis_client.get("omx:test:cancel-flag") is None


def test_the_backlog_drops_what_readers_could_no_longer_replay(log: EventLog) -> None:
    backlog = Backlog(log, keep_s=0.0)
    request_id = uuid.uuid4()
    backlog.add([event(request_id, "token", text="stale")], [], since=time.monotonic() - 1)
    deadline = time.monotonic() + 5
    while len(backlog) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(backlog) == 0
    assert log.replay(request_id) == []


def _fields(log: EventLog, request_id: uuid.UUID) -> list[dict[bytes, Any]]:
    return [fields for _, fields in log.redis.xrange(f"omx:req:{request_id}:events")]


def test_a_job_s_events_carry_their_mark_beside_the_event_not_in_it(log: EventLog) -> None:
    request_id = uuid.uuid4()
    job = JobEvents(log, Backlog(log, keep_s=60), request_id, attempt=3, hold_s=30)
    job.publish("token", text="a", attempt=3)
    (stored,) = _fields(log, request_id)
    assert stored[b"m"] == b"3:1"
    assert b'"m"' not in stored[b"event"]  # readers get the event as before
