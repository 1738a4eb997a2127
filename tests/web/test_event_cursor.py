"""EventCursor, the seq follower that the WebSocket relay and both doors share, against a real
Redis event log: each event once, in order, gaps filled from the store, nothing after the end,
and nothing from an attempt older than one the reader has seen (a swept worker's leftovers).
The readers themselves (the door follower, the socket) are in
tests/pipeline/test_relay_exactly_once.py."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from redis import Redis

from web.realtime import cursor as cursor_module
from web.realtime.cursor import EventCursor
from workers.events import STREAM_KEY, EventLog


@pytest.fixture
def events(redis_client: Redis) -> EventLog:
    return EventLog(redis_client, ttl_s=60)


def _publish(events: EventLog, request_id: uuid.UUID, count: int) -> None:
    for n in range(count):
        events.publish(request_id, "token", text=f"t{n + 1}")


def _seqs(taken: list[tuple[dict[str, Any], bytes]]) -> list[int]:
    return [event["seq"] for event, _ in taken]


def _live(request_id: uuid.UUID, seq: int, **fields: Any) -> bytes:
    """An event as the live channel would carry it; `live` tells it from the stored copy."""
    body = {"seq": seq, "type": "token", "request_id": str(request_id), "live": True, **fields}
    return json.dumps(body).encode()


def test_catch_up_replays_what_follows_after_and_hands_on_the_published_bytes(
    events: EventLog,
) -> None:
    request_id = uuid.uuid4()
    _publish(events, request_id, 5)
    cursor = EventCursor(events, request_id, after=2)

    pages = list(cursor.catch_up())

    assert [_seqs(page) for page in pages] == [[3, 4, 5]]
    assert [raw for _, raw in pages[0]] == events.replay_raw(request_id, after=2)
    assert [event["text"] for event, _ in pages[0]] == ["t3", "t4", "t5"]
    assert cursor.last_seq == 5
    assert not cursor.ended
    assert list(cursor.catch_up()) == [[]]  # nothing new: one empty page, then done


def test_a_new_cursor_starts_at_the_first_event(events: EventLog) -> None:
    request_id = uuid.uuid4()
    _publish(events, request_id, 2)
    cursor = EventCursor(events, request_id)
    assert (cursor.last_seq, cursor.ended) == (0, False)
    assert [_seqs(page) for page in cursor.catch_up()] == [[1, 2]]


def test_events_at_or_below_the_last_seq_are_dropped(events: EventLog) -> None:
    request_id = uuid.uuid4()
    _publish(events, request_id, 3)
    cursor = EventCursor(events, request_id)
    list(cursor.catch_up())

    # Live and replayed events overlap: the live copies of 2 and 3 come after the replay.
    stored = events.replay_raw(request_id)
    assert cursor.take(stored[1:]) == []
    assert cursor.take([_live(request_id, 3)]) == []
    assert cursor.last_seq == 3

    # One batch holding the same event twice takes it once.
    events.publish(request_id, "token", text="t4")
    [fourth] = events.replay_raw(request_id, after=3)
    assert _seqs(cursor.take([fourth, fourth])) == [4]


def test_a_live_batch_that_overlaps_the_replay_takes_what_is_new(events: EventLog) -> None:
    request_id = uuid.uuid4()
    _publish(events, request_id, 5)
    cursor = EventCursor(events, request_id, after=3)
    stored = events.replay_raw(request_id)
    assert _seqs(cursor.take(stored[1:])) == [4, 5]  # 2 and 3 seen, 4 and 5 new


def test_an_item_without_a_seq_is_ignored(events: EventLog) -> None:
    request_id = uuid.uuid4()
    cursor = EventCursor(events, request_id)
    assert cursor.take([json.dumps({"type": "heartbeat"}).encode()]) == []
    assert cursor.last_seq == 0


def test_a_gap_is_filled_from_the_store_and_only_the_gap_is_read(events: EventLog) -> None:
    request_id = uuid.uuid4()
    _publish(events, request_id, 6)
    cursor = EventCursor(events, request_id, after=1)

    # Live 5 arrives while 2-4 were missed: 2-4 come from the store, 5 as it arrived live (the
    # store's 5 and 6 are not read: the fill asks for the gap only).
    taken = cursor.take([_live(request_id, 5)])

    assert _seqs(taken) == [2, 3, 4, 5]
    assert [event.get("live", False) for event, _ in taken] == [False, False, False, True]
    assert taken[-1][1] == _live(request_id, 5)
    assert cursor.last_seq == 5


def test_a_gap_of_one_event_is_filled(events: EventLog) -> None:
    request_id = uuid.uuid4()
    _publish(events, request_id, 3)
    cursor = EventCursor(events, request_id, after=1)
    taken = cursor.take([_live(request_id, 3)])
    assert _seqs(taken) == [2, 3]
    assert [event.get("live", False) for event, _ in taken] == [False, True]


def test_consecutive_live_events_do_not_read_the_store(events: EventLog) -> None:
    request_id = uuid.uuid4()
    _publish(events, request_id, 3)  # stored, but the live copies follow on from last_seq
    cursor = EventCursor(events, request_id, after=1)
    taken = cursor.take([_live(request_id, 2), _live(request_id, 3)])
    assert _seqs(taken) == [2, 3]
    assert all(event["live"] for event, _ in taken)


def test_a_trimmed_gap_cannot_come_back(events: EventLog, redis_client: Redis) -> None:
    request_id = uuid.uuid4()
    _publish(events, request_id, 5)
    redis_client.xdel(STREAM_KEY.format(request_id), "2-1", "3-1")  # trimmed away
    cursor = EventCursor(events, request_id, after=1)

    taken = cursor.take([_live(request_id, 5)])

    # What the store still has of the gap (4) is taken; 2 and 3 are gone for good. The fill
    # read on past the gap (into 5): 5 is taken once.
    assert _seqs(taken) == [4, 5]
    assert cursor.last_seq == 5
    assert cursor.take(events.replay_raw(request_id)) == []


def test_an_entirely_trimmed_gap_still_takes_the_live_event(events: EventLog) -> None:
    request_id = uuid.uuid4()  # nothing stored at all
    cursor = EventCursor(events, request_id, after=3)
    taken = cursor.take([_live(request_id, 7)])
    assert _seqs(taken) == [7]
    assert cursor.last_seq == 7


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_a_terminal_status_ends_the_stream(events: EventLog, status: str) -> None:
    request_id = uuid.uuid4()
    events.publish(request_id, "status", status="running", attempt=1)
    events.publish(request_id, "token", text="t")
    events.publish(request_id, "status", status=status, attempt=1)
    events.publish(request_id, "token", text="late")  # a duplicate worker's leftovers
    cursor = EventCursor(events, request_id)

    pages = list(cursor.catch_up())

    assert [_seqs(page) for page in pages] == [[1, 2, 3]]
    assert cursor.ended
    assert cursor.last_seq == 3
    assert cursor.take([_live(request_id, 4), _live(request_id, 9)]) == []
    assert list(cursor.catch_up()) == []
    assert cursor.last_seq == 3


def test_a_gap_fill_stops_at_a_terminal_status(events: EventLog) -> None:
    request_id = uuid.uuid4()
    events.publish(request_id, "token", text="t")
    events.publish(request_id, "status", status="completed", attempt=1)
    cursor = EventCursor(events, request_id)
    taken = cursor.take([_live(request_id, 3)])  # 1-2 filled; 2 ends it; 3 is refused
    assert _seqs(taken) == [1, 2]
    assert cursor.ended
    assert cursor.last_seq == 2


def test_a_status_that_is_not_terminal_does_not_end_it(events: EventLog) -> None:
    request_id = uuid.uuid4()
    events.publish(request_id, "status", status="queued", attempt=1)
    events.publish(request_id, "status", status="running", attempt=1)
    events.publish(request_id, "token", text="completed")  # "completed" as text, not status
    events.publish(request_id, "progress", status="completed")  # not a status event
    cursor = EventCursor(events, request_id)
    assert [_seqs(page) for page in cursor.catch_up()] == [[1, 2, 3, 4]]
    assert not cursor.ended


def test_catch_up_pages_through_the_store(
    events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cursor_module, "REPLAY_PAGE", 3)
    request_id = uuid.uuid4()
    _publish(events, request_id, 7)
    cursor = EventCursor(events, request_id)

    pages = cursor.catch_up()
    first = next(pages)
    assert _seqs(first) == [1, 2, 3]
    # A reader sends each page before the next is read: the store is read lazily.
    events.publish(request_id, "token", text="t8")
    assert [_seqs(page) for page in pages] == [[4, 5, 6], [7, 8]]
    assert cursor.last_seq == 8


def test_a_full_last_page_is_followed_by_one_more_read(
    events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cursor_module, "REPLAY_PAGE", 3)
    request_id = uuid.uuid4()
    _publish(events, request_id, 6)
    cursor = EventCursor(events, request_id)
    assert [_seqs(page) for page in cursor.catch_up()] == [[1, 2, 3], [4, 5, 6], []]


def test_catch_up_stops_paging_at_the_end(
    events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cursor_module, "REPLAY_PAGE", 2)
    request_id = uuid.uuid4()
    events.publish(request_id, "token", text="t")
    events.publish(request_id, "status", status="completed", attempt=1)
    events.publish(request_id, "token", text="late")
    cursor = EventCursor(events, request_id)
    # The first page is full, but it ended the stream: no second read.
    assert [_seqs(page) for page in cursor.catch_up()] == [[1, 2]]


@pytest.mark.parametrize(("spread", "every"), [(0, 2), (1, 3)])
def test_quiet_asks_the_database_every_few_quiet_periods(
    events: EventLog, monkeypatch: pytest.MonkeyPatch, spread: int, every: int
) -> None:
    asked: list[int] = []
    monkeypatch.setattr(cursor_module.random, "randrange", lambda n: asked.append(n) or spread)
    request_id = uuid.uuid4()
    cursor = EventCursor(events, request_id)
    assert asked == [cursor_module.QUIET_CHECKS_EVERY]

    answers = [cursor.quiet() for _ in range(2 * every)]
    assert answers == ([False] * (every - 1) + [True]) * 2

    # Taking nothing leaves the count alone; taking an event starts it again.
    for _ in range(every - 1):
        assert not cursor.quiet()
    assert cursor.take([_live(request_id, 0)]) == []
    assert cursor.quiet()
    for _ in range(every - 1):
        assert not cursor.quiet()
    events.publish(request_id, "token", text="t")
    list(cursor.catch_up())
    answers = [cursor.quiet() for _ in range(every)]
    assert answers == [False] * (every - 1) + [True]


def test_quiet_checks_are_spread_between_two_and_three_periods(events: EventLog) -> None:
    seen = {EventCursor(events, uuid.uuid4())._check_every for _ in range(200)}
    assert seen == {2, 3}


# --- stale attempts --------------------------------------------------------------------------


def _attempts(events: EventLog, request_id: uuid.UUID, *script: tuple[str, int]) -> None:
    """Publish events of the given (type or status, attempt); tokens' text names both."""
    for n, (what, attempt) in enumerate(script, start=1):
        if what == "token":
            events.publish(request_id, "token", text=f"a{attempt}-{n}", attempt=attempt)
        else:
            events.publish(request_id, "status", status=what, attempt=attempt)


def _counting_reads(events: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The `after` of every store read the cursor makes."""
    reads: list[int] = []
    replay_raw = events.replay_raw

    def counted(request_id: uuid.UUID | str, after: int = 0, count: int | None = None) -> Any:
        reads.append(after)
        return replay_raw(request_id, after, count)

    monkeypatch.setattr(events, "replay_raw", counted)
    return reads


def test_a_swept_attempts_late_events_are_read_but_not_handed_on(events: EventLog) -> None:
    """The sweeper requeued attempt 1 (`restarted`, attempt 2) while its worker still
    streamed: that worker's later tokens are dropped, the new attempt's pass."""
    request_id = uuid.uuid4()
    _attempts(
        events,
        request_id,
        ("queued", 1),
        ("running", 1),
        ("token", 1),  # 3: before `restarted`, voided by it (readers drop text so far)
        ("restarted", 2),  # 4: the sweeper
        ("token", 1),  # 5: the swept worker, not yet aware
        ("running", 2),
        ("token", 2),
        ("token", 1),  # 8: still the swept worker
        ("completed", 2),
    )
    cursor = EventCursor(events, request_id)

    [page] = list(cursor.catch_up())

    assert _seqs(page) == [1, 2, 3, 4, 6, 7, 9]
    assert [event["text"] for event, _ in page if event["type"] == "token"] == ["a1-3", "a2-7"]
    assert (cursor.last_seq, cursor.attempt, cursor.ended) == (9, 2, True)


def test_any_event_of_a_newer_attempt_fences_the_older_ones(events: EventLog) -> None:
    """Not only `restarted`: a reader that missed it (trimmed) learns attempt 2 from any of
    its events."""
    request_id = uuid.uuid4()
    cursor = EventCursor(events, request_id, after=3)
    assert _seqs(cursor.take([_live(request_id, 4, attempt=2)])) == [4]
    assert cursor.take([_live(request_id, 5, attempt=1)]) == []
    assert _seqs(cursor.take([_live(request_id, 6, attempt=2)])) == [6]
    assert cursor.attempt == 2


def test_a_dropped_event_moves_last_seq_so_no_gap_is_filled_for_it(
    events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = uuid.uuid4()
    _attempts(events, request_id, ("token", 1), ("restarted", 2), ("token", 1), ("token", 2))
    cursor = EventCursor(events, request_id, after=1)
    reads = _counting_reads(events, monkeypatch)

    assert _seqs(cursor.take([_live(request_id, 2, type="status", attempt=2)])) == [2]
    assert cursor.take([_live(request_id, 3, attempt=1)]) == []
    assert cursor.last_seq == 3
    taken = cursor.take([_live(request_id, 4, attempt=2)])

    assert _seqs(taken) == [4]
    assert reads == []  # 3 was read (live), not missing: nothing to fill
    assert cursor.take(events.replay_raw(request_id)) == []  # the store's copies: seen


def test_stale_events_in_a_filled_gap_are_dropped_too(events: EventLog) -> None:
    request_id = uuid.uuid4()
    _attempts(
        events,
        request_id,
        ("restarted", 2),
        ("token", 1),
        ("token", 1),
        ("running", 2),
        ("token", 2),
    )
    cursor = EventCursor(events, request_id)
    assert _seqs(cursor.take([_live(request_id, 1, type="status", attempt=2)])) == [1]

    taken = cursor.take([_live(request_id, 5, attempt=2)])  # 2-4 lost live: from the store

    assert _seqs(taken) == [4, 5]
    assert cursor.last_seq == 5


def test_events_without_an_attempt_and_of_the_same_attempt_pass(events: EventLog) -> None:
    """An engine retry's `restarted` keeps its attempt's number; events that carry none
    (none do today) are never taken for stale."""
    request_id = uuid.uuid4()
    _attempts(events, request_id, ("running", 2), ("token", 2), ("restarted", 2), ("token", 2))
    events.publish(request_id, "progress", note="no attempt")
    cursor = EventCursor(events, request_id)
    assert [_seqs(page) for page in cursor.catch_up()] == [[1, 2, 3, 4, 5]]
    assert cursor.attempt == 2


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_a_terminal_status_ends_the_stream_whatever_attempt_it_names(
    events: EventLog, status: str
) -> None:
    """A terminal status follows the statement that ended the row, so it is never a stale
    worker's; a cancel names the attempt its caller read before the statement, which may
    be older than one a sweep has just announced."""
    request_id = uuid.uuid4()
    _attempts(events, request_id, ("running", 1), ("restarted", 2), (status, 1), ("token", 2))
    cursor = EventCursor(events, request_id)
    assert [_seqs(page) for page in cursor.catch_up()] == [[1, 2, 3]]
    assert cursor.ended


def test_a_resumed_reader_knows_the_attempt_of_its_last_event_in_the_same_read(
    events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """?after=S: the reader was given S, so S's attempt is the newest it knows. The first
    replay reads from S itself (one read, as before) and drops a stale worker's events."""
    request_id = uuid.uuid4()
    _attempts(events, request_id, ("running", 1), ("restarted", 2), ("token", 1), ("token", 2))
    reads = _counting_reads(events, monkeypatch)
    cursor = EventCursor(events, request_id, after=2)

    pages = list(cursor.catch_up())

    assert reads == [1]  # from S - 1: S and what follows it, in one read
    assert [_seqs(page) for page in pages] == [[4]]
    assert pages[0][0][1] == events.replay_raw(request_id, after=3)[0]
    assert (cursor.last_seq, cursor.attempt) == (4, 2)


def test_a_resumed_reader_whose_last_event_was_trimmed_replays_everything_after_it(
    events: EventLog, redis_client: Redis
) -> None:
    request_id = uuid.uuid4()
    _attempts(events, request_id, ("running", 1), ("restarted", 2), ("token", 2))
    redis_client.xdel(STREAM_KEY.format(request_id), "2-1")
    cursor = EventCursor(events, request_id, after=2)
    assert [_seqs(page) for page in cursor.catch_up()] == [[3]]
    assert cursor.attempt == 2


@pytest.mark.parametrize("trimmed", [False, True], ids=["kept", "trimmed"])
def test_a_resumed_reader_pages_as_before(
    events: EventLog, redis_client: Redis, monkeypatch: pytest.MonkeyPatch, trimmed: bool
) -> None:
    """The first read holds one event more (S itself), never a longer page."""
    monkeypatch.setattr(cursor_module, "REPLAY_PAGE", 2)
    request_id = uuid.uuid4()
    _publish(events, request_id, 7)
    if trimmed:
        redis_client.xdel(STREAM_KEY.format(request_id), "2-1")
    cursor = EventCursor(events, request_id, after=2)
    assert [_seqs(page) for page in cursor.catch_up()] == [[3, 4], [5, 6], [7]]
    assert cursor.last_seq == 7


def test_ends_reads_the_first_and_the_last_stored_event(events: EventLog) -> None:
    """What a follower's handshake reads instead of the database (web/inference/service.py)."""
    request_id = uuid.uuid4()
    assert events.ends(request_id) is None  # no events (never published, or expired)

    events.publish(request_id, "status", status="queued", user_id="owner")
    _publish(events, request_id, 3)
    events.publish(request_id, "status", status="completed", user_id="owner")

    ends = events.ends(request_id)
    assert ends is not None
    first, last = ends
    assert (first["seq"], first["status"], first["user_id"]) == (1, "queued", "owner")
    assert (last["seq"], last["status"]) == (5, "completed")
