"""One Redis subscription per web process, fanned out to every socket of that process.

A socket asks the hub for a channel; the hub subscribes on its single Redis connection the
first time anyone asks (and unsubscribes when the last one leaves), and hands each message to
every interested mailbox. `subscribe` returns only once Redis has confirmed the subscription,
so a reader that subscribes and then replays stored events cannot miss one in between.

The listener runs in a thread (a greenlet under gunicorn's gevent workers). Only it reads
from the connection; commands are written under a lock from the callers' threads. If Redis
goes away the listener reconnects, subscribes again to every channel in use and tells every
mailbox to resynchronise (per-request streams replay what they may have missed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import ConnectionPool
from redis.connection import ConnectionInterface
from redis.exceptions import RedisError

from web.realtime.mailbox import Mailbox

log = logging.getLogger(__name__)

# Turns a message into the frame one subscriber gets, or None when it does not want it.
# No shape: the message as published.
Shape = Callable[[bytes], bytes | None]


MIN_BACKOFF_S, MAX_BACKOFF_S = 0.1, 5.0  # between reconnection attempts
CLIENT_NAME = "omx-relay-hub"


def _without_protocol(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "protocol"]
    return urlunsplit(parts._replace(query=urlencode(query)))


class HubUnavailable(Exception):
    """Redis did not confirm a subscription in time."""


@dataclass
class _Channel:
    subscribers: dict[Mailbox, Shape | None] = field(default_factory=dict)
    confirmed: threading.Event = field(default_factory=threading.Event)


class Hub:
    def __init__(self, redis_url: str, *, keepalive_s: float = 15.0, confirm_s: float = 5.0):
        # RESP2: subscription replies and messages come back from read_response() as
        # arrays (under RESP3, redis-py routes them to push handlers instead).
        self._pool = ConnectionPool.from_url(
            _without_protocol(redis_url),  # options in the URL would override ours
            protocol=2,
            client_name=CLIENT_NAME,  # findable in CLIENT LIST
            socket_connect_timeout=confirm_s,
            socket_timeout=keepalive_s * 3,
        )
        self._keepalive_s = keepalive_s
        self._confirm_s = confirm_s
        self._channels: dict[bytes, _Channel] = {}
        self._lock = threading.Lock()  # guards _channels and every write to the connection
        # Redis confirms SUBSCRIBEs in the order they were sent: this is who each one is for.
        self._awaiting: deque[_Channel] = deque()
        self._connection: ConnectionInterface | None = None
        self._started = False
        self._stopped = threading.Event()
        # Set when a connection was lost: once the new one has confirmed every subscription,
        # every reader is told to resynchronise (not before: it would replay too early).
        self._resync_when_confirmed = False
        self.messages_relayed = 0

    # -- used by sockets --------------------------------------------------------------------

    def subscribe(self, channel: str, mailbox: Mailbox, shape: Shape | None = None) -> None:
        """Deliver `channel`'s messages to `mailbox` from now on. Blocks until Redis has
        confirmed the subscription; raises HubUnavailable if it does not."""
        self._start()
        name = channel.encode()
        with self._lock:
            entry = self._channels.get(name)
            if entry is None:
                entry = self._channels[name] = _Channel()
                self._subscribe_on_redis([(name, entry)])
            entry.subscribers[mailbox] = shape
        if not entry.confirmed.wait(self._confirm_s):
            self.unsubscribe(channel, mailbox)
            raise HubUnavailable(f"no confirmation for {channel}")

    def unsubscribe(self, channel: str, mailbox: Mailbox) -> None:
        name = channel.encode()
        with self._lock:
            entry = self._channels.get(name)
            if entry is None:
                return
            entry.subscribers.pop(mailbox, None)
            if not entry.subscribers:
                del self._channels[name]
                self._send("UNSUBSCRIBE", name)

    def leave(self, mailbox: Mailbox, channels: list[str]) -> None:
        for channel in channels:
            self.unsubscribe(channel, mailbox)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def stop(self) -> None:
        self._stopped.set()
        connection = self._connection
        if connection is not None:
            connection.disconnect()

    # -- the listener -----------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._listen_forever, name="relay-hub", daemon=True).start()
        threading.Thread(target=self._keepalive, name="relay-hub-keepalive", daemon=True).start()

    def _send(self, *command: str | bytes) -> None:
        """Write one command; the caller holds the lock. A failed write is the listener's
        problem: it reconnects and subscribes to every channel again."""
        connection = self._connection
        if connection is None:
            return
        try:
            connection.send_command(*command, check_health=False)
        except RedisError as error:
            # redis-py has dropped its socket; writing again would make it reconnect on its
            # own, outside the listener. No more writes until the listener has a new one.
            self._connection = None
            log.warning("relay hub: write failed (%s); the listener will reconnect", error)

    def _subscribe_on_redis(self, channels: list[tuple[bytes, _Channel]]) -> None:
        if not channels or self._connection is None:
            return  # the listener subscribes to everything in _channels once it connects
        self._awaiting.extend(entry for _, entry in channels)
        self._send("SUBSCRIBE", *(name for name, _ in channels))

    def _keepalive(self) -> None:
        # A PING every keepalive_s makes a silent connection an error within the read timeout.
        while not self._stopped.wait(self._keepalive_s):
            with self._lock:
                self._send("PING")

    def _listen_forever(self) -> None:
        backoff = MIN_BACKOFF_S
        while not self._stopped.is_set():
            connection = None
            try:
                connection = self._pool.make_connection()
                connection.connect()
                self._adopt(connection)
                backoff = MIN_BACKOFF_S
                while not self._stopped.is_set():
                    self._handle(connection.read_response())
            except (RedisError, OSError) as error:
                if self._stopped.is_set():
                    return
                log.warning("relay hub: Redis connection lost (%s); reconnecting", error)
            except Exception:  # a bug in a shape or mailbox must not end the relay
                log.exception("relay hub: listener failed; restarting it")
            finally:
                self._drop(connection)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _adopt(self, connection: ConnectionInterface) -> None:
        """Make `connection` the hub's and subscribe it to every channel in use."""
        with self._lock:
            self._awaiting.clear()
            self._connection = connection
            self._subscribe_on_redis(list(self._channels.items()))
            if not self._awaiting:
                self._resync_when_confirmed = False  # nobody to tell

    def _drop(self, connection: ConnectionInterface | None) -> None:
        with self._lock:
            self._connection = None
            self._awaiting.clear()
            # New readers must wait for the next connection's confirmation, and readers
            # that were there may have missed messages.
            for entry in self._channels.values():
                entry.confirmed.clear()
            if self._channels:
                self._resync_when_confirmed = True
        if connection is not None:
            connection.disconnect()

    def _handle(self, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == b"message":
            self._deliver(reply[1], reply[2])
        elif kind == b"subscribe":
            with self._lock:
                entry = self._awaiting.popleft() if self._awaiting else None
                resync = self._resync_when_confirmed and not self._awaiting
                if resync:
                    self._resync_when_confirmed = False
            if entry is not None:
                entry.confirmed.set()
            if resync:
                self._resync_all()

    def _deliver(self, channel: bytes, data: bytes) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return
        for mailbox, shape in list(entry.subscribers.items()):
            frame = data if shape is None else shape(data)
            if frame is not None:
                mailbox.put(frame)
                self.messages_relayed += 1

    def _resync_all(self) -> None:
        """Messages may have been published while we were away: say so to every reader."""
        with self._lock:
            mailboxes = {m for entry in self._channels.values() for m in entry.subscribers}
        for mailbox in mailboxes:
            mailbox.request_resync()
