"""Every caller's request budget (RATELIMIT_DEFAULT, e.g. "100/minute;10/second"): all its
windows counted, checked and described for the response headers in one Redis call.

flask-limiter counts each window with its own call and reads the headers' figures with two
more (four round trips per request for two windows); a budget every request pays should
cost one. Windows are fixed and start at a caller's first request, as flask-limiter's
default strategy does; limit strings are parsed by `limits`, the library under it, whose
in-memory storage also counts for this process while Redis is away.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# KEYS: one counter per window. ARGV: each window's length in seconds, then the cost.
# Returns count and seconds left, per window.
_COUNT = """
local cost = tonumber(ARGV[#KEYS + 1])
local answer = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCRBY', key, cost)
  local ttl = redis.call('TTL', key)
  if ttl < 0 then
    redis.call('EXPIRE', key, ARGV[i])
    ttl = tonumber(ARGV[i])
  end
  answer[#answer + 1] = count
  answer[#answer + 1] = ttl
end
return answer
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int  # the window that binds most: its size,
    remaining: int  # what is left of it,
    reset_at: int  # and when it starts again (epoch seconds)


class Budget:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(_COUNT)
        self._fallback = FixedWindowRateLimiter(MemoryStorage())

    def spend(self, limits: str, caller: str, cost: int = 1) -> Verdict:
        windows = _windows(limits)
        keys = [f"{self.prefix}:{window.key_for(caller)}" for window in windows]
        try:
            raw = self._script(keys, [*(w.get_expiry() for w in windows), cost])
            counts = [(int(raw[i]), int(raw[i + 1])) for i in range(0, len(raw), 2)]
        except RedisError as error:
            log.warning("rate-limit storage unreachable, counting in this process: %s", error)
            counts = self._count_here(windows, keys, cost)
        return _verdict(windows, counts)

    def _count_here(
        self, windows: list[RateLimitItem], keys: list[str], cost: int
    ) -> list[tuple[int, int]]:
        counts = []
        for window, key in zip(windows, keys, strict=True):
            self._fallback.hit(window, key, cost=cost)
            reset_at, remaining = self._fallback.get_window_stats(window, key)
            counts.append((window.amount - remaining, max(0, int(reset_at - time.time()))))
        return counts


@functools.lru_cache(maxsize=256)
def _windows(limits: str) -> list[RateLimitItem]:
    """A limit string's windows, parsed once: the strings are few (the defaults, each
    role's and key's), the requests many. Callers only read the list."""
    return parse_many(limits)


def _verdict(windows: list[RateLimitItem], counts: list[tuple[int, int]]) -> Verdict:
    now = int(time.time())
    allowed = all(count <= w.amount for w, (count, _) in zip(windows, counts, strict=True))
    # The window with the least left binds; among equals, the one that resets last.
    window, (count, ttl) = min(
        zip(windows, counts, strict=True),
        key=lambda pair: (pair[0].amount - pair[1][0], -pair[1][1]),
    )
    return Verdict(allowed, window.amount, max(0, window.amount - count), now + max(ttl, 1))
