"""system_metrics: every few seconds, the fleet's load and the relay's sockets.

Every web process reports its open sockets to Redis; one of them at a time (whoever takes a
short Redis lock) reads the load from PostgreSQL and publishes it, and only while someone is
subscribed. Several web processes therefore publish one series, not one each.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from db.load import live_load
from db.session import Database
from web.realtime.socket import SocketRegistry
from workers.events import TOPIC_CHANNEL, announce

log = logging.getLogger(__name__)

PROCESSES_KEY = "omx:ws:processes"  # sorted set: web process -> last report time
SOCKETS_KEY = "omx:ws:sockets:{}"  # that process's open sockets
LOCK_KEY = "omx:lock:system_metrics"
CHANNEL = TOPIC_CHANNEL.format("system_metrics")


class Pulse:
    def __init__(
        self, redis: Redis, database: Database, sockets: SocketRegistry, interval_s: float
    ) -> None:
        self.redis = redis
        self.database = database
        self.sockets = sockets
        self.interval_s = interval_s
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self._started = False
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._run, name="relay-pulse", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except (RedisError, SQLAlchemyError) as error:
                log.warning("system_metrics skipped: %s", error)
            except Exception:
                log.exception("system_metrics failed")

    def tick(self) -> bool:
        """Report this process; publish if it is our turn and someone listens."""
        now = time.time()
        stale_before = now - 3 * self.interval_s
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(PROCESSES_KEY, {self.process: now})
            pipe.set(
                SOCKETS_KEY.format(self.process), self.sockets.open, ex=int(3 * self.interval_s) + 1
            )
            pipe.zremrangebyscore(PROCESSES_KEY, "-inf", stale_before)
            pipe.set(LOCK_KEY, self.process, nx=True, px=int(self.interval_s * 900))
            pipe.pubsub_numsub(CHANNEL)
            *_, ours, listeners = pipe.execute()
        if not ours or not listeners or not listeners[0][1]:
            return False
        live: list[bytes] = self.redis.zrangebyscore(  # type: ignore[assignment]
            PROCESSES_KEY, stale_before, "+inf"
        )
        processes = [p.decode() for p in live]
        counts = self.redis.mget([SOCKETS_KEY.format(p) for p in processes]) if processes else []
        with self.database.unit_of_work() as session:
            load = live_load(session=session)
        announce(
            self.redis,
            "system_metrics",
            "system_metrics",
            **load.as_dict(),
            sockets=sum(int(c) for c in counts if c is not None),
            web_processes=len(processes),
        )
        return True
