"""The WebSocket quota: how many sockets one account holds open, across every web process.

Each open socket holds a seat: a member of the account's sorted set in Redis, scored by
when its lease ends. A script takes a seat only below the quota, in one atomic step (so two
processes cannot both take the last one), after dropping the leases that ended. A socket
renews its lease while it stays open and gives the seat back when it closes; a process
that dies without giving seats back leaves them to lapse within SEAT_LEASES renewals.
Times are the Redis server's, so the web hosts' clocks never matter.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import RedisError

from web.errors import TooManyRequests

log = logging.getLogger(__name__)

SEATS_KEY = "omx:ws:seats:{}"
SEAT_LEASES = 3  # a seat lapses after this many missed renewals

# KEYS[1] the account's seats; ARGV: seat id, lease (ms), quota (0: none). Returns 1 if the
# seat is held now, 0 if the quota is reached. Sent by its SHA (EVALSHA; loaded again if the
# server has not got it), as the other scripts are, not as its whole text at every handshake
# and renewal. Bytes: its SHA needs no client's encoder, so any client can run it.
_TAKE = Script(
    None,  # type: ignore[arg-type]
    b"""
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local quota = tonumber(ARGV[3])
if quota > 0 and redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
   and redis.call('ZCARD', KEYS[1]) >= quota then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
""",
)


@dataclass
class Seat:
    redis: Redis
    user_id: uuid.UUID
    renew_s: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_renewal: float = 0.0

    @property
    def key(self) -> str:
        return SEATS_KEY.format(self.user_id)

    @property
    def lease_ms(self) -> int:
        return int(self.renew_s * SEAT_LEASES * 1000)

    def take(self, quota: int | None) -> bool:
        taken = bool(_TAKE([self.key], [self.id, self.lease_ms, quota or 0], client=self.redis))
        self.next_renewal = time.monotonic() + self.renew_s
        return taken

    def renew_if_due(self) -> None:
        """Keep the seat while the socket is open (whatever the quota is by now: a socket
        admitted is not cut off by a lower quota, new ones are refused)."""
        if time.monotonic() < self.next_renewal:
            return
        try:
            self.take(None)
        except RedisError as error:
            log.warning("could not renew a socket's seat: %s", error)

    def release(self) -> None:
        try:
            self.redis.zrem(self.key, self.id)
        except RedisError as error:  # it lapses by itself
            log.warning("could not give back a socket's seat: %s", error)


def take_seat(redis: Redis, user_id: uuid.UUID, quota: int | None, renew_s: float) -> Seat:
    """A seat for a new socket, or 429 `quota_websockets`."""
    seat = Seat(redis, user_id, renew_s)
    if not seat.take(quota):
        raise TooManyRequests(
            f"Your account already holds {quota} open WebSockets, its limit; close one first.",
            code="quota_websockets",
            details={"limit": quota},
            headers={"Retry-After": "5"},
        )
    return seat


def seats_held(redis: Redis, user_id: uuid.UUID) -> int:
    """Sockets the account holds open now (leases not yet ended, by this host's clock)."""
    return int(redis.zcount(SEATS_KEY.format(user_id), int(time.time() * 1000), "+inf"))
