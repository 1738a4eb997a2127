"""Exactly once, in order, pinned through the readers themselves rather than through timing
that may never hit the rules: the door follower (web/realtime/follow.py, on the app's real
relay and hub) and the WebSocket stream (gunicorn + gevent, a real client) are fed events
published straight to Redis: replayed and live copies that overlap, a raw duplicate on the
live channel, gaps (events stored but never published live), and a swept attempt's leftovers.
Each reader must hand on every `seq` once, in order, and none of the stale attempt's.

The cursor's rules one by one are in tests/web/test_event_cursor.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from db.session import Database
from tests.conftest import LiveServer
from tests.pipeline.jobs import store_queued
from tests.support.ws import Received, connect, next_frame, read_until_closed, token_of
from web.realtime import cursor as cursor_module
from web.realtime import follow as follow_module
from web.realtime.follow import Quiet, follow
from web.realtime.relay import Relay
from workers.events import CHANNEL, SEQ_KEY, STREAM_KEY, EventLog

NORMAL = 1000
IDLE_S = 0.05


class Feed:
    """One request's events, published as the workers' script does, or in the ways a
    reader may meet them: only stored (its live message lost), or live once more."""

    def __init__(self, events: EventLog, request_id: uuid.UUID) -> None:
        self.events, self.request_id = events, request_id
        self.redis: Redis = events.redis

    def status(self, status: str, attempt: int) -> None:
        self.events.publish(self.request_id, "status", status=status, attempt=attempt)

    def token(self, attempt: int, *, live: bool = True) -> None:
        seq = int(self.redis.get(SEQ_KEY.format(self.request_id)) or 0) + 1
        fields = {"text": f"a{attempt}-{seq} ", "attempt": attempt}
        if live:
            assert self.events.publish(self.request_id, "token", **fields) == seq
        else:
            self.stored_only("token", **fields)

    def stored_only(self, event_type: str, **fields: Any) -> None:
        """Numbered and stored like any event, but its live message never arrives."""
        seq = self.redis.incr(SEQ_KEY.format(self.request_id))
        body = {"seq": seq, "type": event_type, "request_id": str(self.request_id), **fields}
        raw = json.dumps(body, separators=(",", ":"))
        self.redis.xadd(STREAM_KEY.format(self.request_id), {"event": raw}, id=f"{seq}-1")

    def again(self, seq: int) -> None:
        """The stored event `seq`, published live once more, byte for byte."""
        [raw] = self.events.replay_raw(self.request_id, after=seq - 1, count=1)
        self.redis.publish(CHANNEL.format(self.request_id), raw)


def _before_the_reader(feed: Feed) -> None:
    """1-3: stored before the reader subscribes; it gets them by replay only."""
    feed.status("queued", 1)
    feed.status("running", 1)
    feed.token(1)


def _overlap(feed: Feed) -> None:
    """While the reader is subscribed: 4, and live copies of what it replays (2, 3)."""
    feed.token(1)  # 4
    feed.again(2)
    feed.again(3)


def _gaps_duplicates_and_a_swept_attempt(feed: Feed) -> None:
    """5-12, while the reader is subscribed."""
    feed.token(1, live=False)  # 5: a gap, in the store only
    feed.token(1)  # 6: live; 5 is filled from the store before it
    feed.again(6)  # the same raw message twice
    feed.status("restarted", 2)  # 7: the sweeper requeued attempt 1
    feed.token(1)  # 8: the swept worker, not yet aware: dropped
    feed.token(1, live=False)  # 9: the same, in a gap: dropped when the gap is filled
    feed.status("running", 2)  # 10
    feed.token(2)  # 11
    feed.again(11)
    feed.status("completed", 2)  # 12


LIVE_MESSAGES = 8  # what _gaps_duplicates_and_a_swept_attempt publishes on the channel
EXPECTED_SEQS = [1, 2, 3, 4, 5, 6, 7, 10, 11, 12]
# Attempt 1's text up to `restarted` (readers void it there), then attempt 2's.
EXPECTED_TEXT = "a1-3 a1-4 a1-5 a1-6 a2-11 "


# --- the door follower -----------------------------------------------------------------------


@pytest.fixture
def relay(base_app: Flask, redis_client: Redis) -> Relay:
    """The app's own relay: its hub subscribes on the test's Redis."""
    real: Relay = base_app.extensions["relay"]
    return real


def _follow(
    relay: Relay,
    request_id: uuid.UUID,
    after_seq: dict[int, Callable[[], None]],
    when_quiet: list[Callable[[], None]],
) -> list[dict[str, Any]]:
    """Everything `follow` hands on until the request ends. The reader is a generator: the
    actions run while it is suspended, subscribed, `after_seq[n]` once it has handed on
    `seq` n (it may be mid-replay then), `when_quiet` one per quiet period (it is then
    waiting for live events)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    for item in follow(relay, request_id, IDLE_S):
        assert time.monotonic() < deadline, f"stuck after {_seqs(got)}"
        if isinstance(item, Quiet):
            if when_quiet:
                when_quiet.pop(0)()
            continue
        got.append(item)
        if action := after_seq.pop(item["seq"], None):
            action()
    assert not after_seq, f"never handed on {sorted(after_seq)}"
    assert not when_quiet, "the reader ended before the script did"
    return got


def _seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(event["text"] for event in events if event["type"] == "token")


def test_the_door_follower_hands_on_each_seq_once_in_order(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay pages of two: 4, published after the first page (1-2) was read, comes both
    from the store (with 3) and live. The rest arrives live while the reader waits."""
    monkeypatch.setattr(cursor_module, "REPLAY_PAGE", 2)
    feed = Feed(relay.events, uuid.uuid4())
    _before_the_reader(feed)

    got = _follow(
        relay,
        feed.request_id,
        after_seq={1: lambda: _overlap(feed)},
        when_quiet=[lambda: _gaps_duplicates_and_a_swept_attempt(feed)],
    )

    assert _seqs(got) == EXPECTED_SEQS
    assert got[-1]["status"] == "completed"
    assert _text(got) == EXPECTED_TEXT


def test_a_door_follower_that_falls_behind_replays_each_seq_once(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mailbox of three overflows: the follower takes a fresh one and replays from the
    store what it missed, stale attempt and gaps included, without a repeat."""
    monkeypatch.setattr(follow_module, "MAILBOX", 3)
    feed = Feed(relay.events, uuid.uuid4())
    _before_the_reader(feed)

    def overflow() -> None:
        delivered = relay.hub.messages_relayed
        _gaps_duplicates_and_a_swept_attempt(feed)
        # All of them in the (suspended) reader's mailbox before it reads again.
        deadline = time.monotonic() + 5
        while relay.hub.messages_relayed < delivered + LIVE_MESSAGES:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    got = _follow(
        relay,
        feed.request_id,
        after_seq={3: lambda: _overlap(feed)},
        when_quiet=[overflow],
    )

    assert _seqs(got) == EXPECTED_SEQS
    assert _text(got) == EXPECTED_TEXT


# --- the WebSocket stream --------------------------------------------------------------------


@pytest.fixture
def request_id(api: FlaskClient, user_headers: dict[str, str], committed: Database) -> uuid.UUID:
    """A job of the caller's, queued in the database (no worker here: the test is its
    worker, publishing its events)."""
    owner = api.get("/api/v1/users/profile", headers=user_headers).get_json()["id"]
    return store_queued(committed, owner, {"prompt": "exactly once"})


def _until_seq(ws: Any, seq: int) -> Received:
    received = Received()
    while not received.seqs or received.seqs[-1] < seq:
        frame = next_frame(ws, received)
        assert frame is not None, received
        if frame["type"] != "heartbeat":
            received.frames.append(frame)
    return received


def test_the_socket_sends_each_seq_once_in_order_and_no_stale_attempt(
    api: FlaskClient,
    user_headers: dict[str, str],
    relay_server: LiveServer,
    request_id: uuid.UUID,
) -> None:
    feed = Feed(api.application.extensions["events"], request_id)
    path, token = f"/ws/inference/{request_id}", token_of(user_headers)
    _before_the_reader(feed)
    ws = connect(relay_server.url, path, token)
    replayed = _until_seq(ws, 3)  # replayed after the subscription was confirmed: live now

    _overlap(feed)
    _gaps_duplicates_and_a_swept_attempt(feed)
    rest = read_until_closed(ws)

    received = Received(replayed.frames + rest.frames)
    assert received.seqs == EXPECTED_SEQS
    assert received.text == EXPECTED_TEXT
    assert received.frames[-1]["status"] == "completed"
    assert rest.close_code == NORMAL

    # Resuming after `restarted` (7): the socket learns attempt 2 from event 7 itself and
    # drops the swept worker's 8 and 9 from the replay too.
    resumed = read_until_closed(connect(relay_server.url, f"{path}?after=7", token))
    assert resumed.seqs == [10, 11, 12]
    assert resumed.close_code == NORMAL
