"""Per-request events: a sequence number, Redis pub/sub for live readers, and a Redis
Stream per request to replay from, so a reader that subscribes first and then replays
after its last `seq` sees every event exactly once.

One Lua script numbers, stores and publishes each event, so numbering and publication
never diverge (two workers for one request still get distinct, increasing numbers). The
keys' time to live is set by the first event and renewed by every status event (a job's
life has a few), not by each of its many token events.

A round trip that failed (Redis restarting) may still have run. A running job's events
therefore carry a mark, (attempt, n), stored in the stream beside the event; sent again
with `once=True`, an event whose mark the stream already holds (or a later one of the same
attempt) is skipped, so a retry never publishes an event twice (workers/job_events.py).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, NamedTuple

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

log = logging.getLogger(__name__)

SEQ_KEY = "omx:req:{}:seq"
STREAM_KEY = "omx:req:{}:events"
CHANNEL = "omx:req:{}"
STATUS_CHANNEL = "omx:inference:status"  # every request's status changes, for topic sockets
TOPIC_CHANNEL = "omx:topic:{}"  # fleet-wide news: node_status, model_update, system_metrics

_PUBLISH = """
if ARGV[6] == '1' then
  local attempt, n = string.match(ARGV[5], '^(%d+):(%d+)$')
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 64)) do
    local fields = entry[2]
    if fields[3] == 'm' then
      local a, m = string.match(fields[4], '^(%d+):(%d+)$')
      if a == attempt then
        if tonumber(m) >= tonumber(n) then return 0 end
        break
      end
    end
  end
end
local seq = redis.call('INCR', KEYS[1])
local event = '{"seq":' .. seq .. ',' .. string.sub(ARGV[1], 2)
if ARGV[5] == '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'event', event)
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'event', event, 'm', ARGV[5])
end
if seq == 1 or ARGV[4] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
redis.call('PUBLISH', KEYS[3], event)
if ARGV[4] == '1' then redis.call('PUBLISH', KEYS[4], event) end
return seq
"""


def worker_redis(url: str, timeout_s: float) -> Redis:
    """A worker's Redis client: it fails within a fraction of a second while Redis is away.
    One quick retry still reconnects a pooled connection that a Redis restart broke; redis-
    py's default (ten, backing off to a second each) would stall a running job for seconds
    at every try during an outage (workers/job_events.py holds its events instead)."""
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), retries=2),
    )


class Event(NamedTuple):
    request_id: uuid.UUID | str
    type: str
    fields: dict[str, Any]
    # "<attempt>:<n>", the n-th event of that attempt's worker: stored beside the event so
    # that one sent again after a failed round trip can be recognised (`publish_many(once=)`).
    mark: str = ""


def event(request_id: uuid.UUID | str, event_type: str, **fields: Any) -> Event:
    return Event(request_id, event_type, fields)


class EventLog:
    def __init__(self, redis: Redis, ttl_s: int, max_events: int = 100_000) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_events = max_events
        self._script = redis.register_script(_PUBLISH)

    def publish(self, request_id: uuid.UUID | str, event_type: str, **fields: Any) -> int:
        """Append one event; returns its sequence number."""
        return int(self._script(*self._call(Event(request_id, event_type, fields))))

    def publish_many(
        self,
        events: list[Event] | list[tuple[uuid.UUID | str, str, dict[str, Any]]],
        delete: list[str] | None = None,
        *,
        once: bool = False,
    ) -> list[int]:
        """Append (request_id, event_type, fields) events in order, and then delete the
        `delete` keys, in one round trip; returns the events' sequence numbers (0 for a
        marked event skipped because the stream holds it already: `once`).

        The pipeline calls the script by its digest: redis-py's pipelined scripts would ask
        SCRIPT EXISTS first, a second round trip every time. A Redis that lost the script
        (a restart) answers NOSCRIPT for all of them, and nothing ran: load it and go again.
        A lone event with nothing to delete (most batches: the first token, a coalesced
        run of text) is one EVALSHA sent as is: a pipeline's own bookkeeping cost as much
        CPU as the call.
        """
        batch = [Event(*item) for item in events]
        if len(batch) == 1 and not delete:
            return [int(self._script(*self._call(batch[0], once)))]
        try:
            return self._pipelined(batch, delete, once)
        except NoScriptError:
            self.redis.script_load(_PUBLISH)
            return self._pipelined(batch, delete, once)

    def _pipelined(self, events: list[Event], delete: list[str] | None, once: bool) -> list[int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for item in events:
                keys, args = self._call(item, once)
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            if delete:
                pipe.delete(*delete)
            results = pipe.execute()
        return [int(seq) for seq in results[: len(events)]]

    def _call(self, item: Event, once: bool = False) -> tuple[list[str], list[Any]]:
        request_id, event_type, fields, mark = item
        body = json.dumps(
            {"type": event_type, "request_id": str(request_id), **fields},
            separators=(",", ":"),
            default=str,
        )
        keys = [
            SEQ_KEY.format(request_id),
            STREAM_KEY.format(request_id),
            CHANNEL.format(request_id),
            STATUS_CHANNEL,
        ]
        also_status = "1" if event_type == "status" else "0"
        check = "1" if once and mark else "0"
        return keys, [body, self.ttl_s, self.max_events, also_status, mark, check]

    def ends(self, request_id: uuid.UUID | str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The first and the last stored event, in one command (XINFO STREAM reads both
        ends of the stream, whatever its length); None when the request has no stored
        events (they expired, or none was ever published)."""
        try:
            info: Any = self.redis.xinfo_stream(STREAM_KEY.format(request_id))
        except ResponseError as error:
            if "no such key" in str(error):
                return None
            raise
        first, last = info["first-entry"], info["last-entry"]
        if first is None or last is None:  # its entries were all deleted
            return None
        return json.loads(first[1][b"event"]), json.loads(last[1][b"event"])

    def replay(self, request_id: uuid.UUID | str, after: int = 0) -> list[dict[str, Any]]:
        """Stored events with seq > after, in order."""
        return [json.loads(raw) for raw in self.replay_raw(request_id, after)]

    def replay_raw(
        self, request_id: uuid.UUID | str, after: int = 0, count: int | None = None
    ) -> list[bytes]:
        """The same, as the JSON bytes that were published (a relay passes them on as is);
        at most `count` of them."""
        entries: Any = self.redis.xrange(
            STREAM_KEY.format(request_id), min=f"({after}-1", max="+", count=count
        )
        return [fields[b"event"] for _, fields in entries or []]


def announce(redis: Redis, topic: str, event_type: str, **fields: Any) -> None:
    """Publish fleet-wide news on `topic` (no replay: topic readers re-read state over REST
    when they connect). Best effort: news must never fail the change it reports."""
    body = json.dumps(
        {"type": event_type, "ts": time.time(), **fields}, separators=(",", ":"), default=str
    )
    try:
        redis.publish(TOPIC_CHANNEL.format(topic), body)
    except RedisError as error:
        log.warning("could not announce %s %s: %s", topic, event_type, error)
