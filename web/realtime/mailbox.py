"""A socket's bounded send queue.

The hub puts messages in without ever blocking; the socket's own thread takes them out in
batches and writes them. When a client reads more slowly than events arrive, the queue
fills and the mailbox is marked overflowed instead of growing: that socket is cut off and
nobody else waits for it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class Mailbox:
    def __init__(self, limit: int, on_overflow: Callable[[], None] | None = None) -> None:
        self._items: deque[bytes] = deque()
        self._limit = limit
        self._ready = threading.Event()
        self._on_overflow = on_overflow
        self.overflowed = False
        self.resync_requested = False
        self.closed = False

    def put(self, item: bytes) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._items) >= self._limit:
            self.overflowed = True
            self._ready.set()
            if self._on_overflow is not None:
                self._on_overflow()
            return
        self._items.append(item)
        self._ready.set()

    def request_resync(self) -> None:
        self.resync_requested = True
        self._ready.set()

    def wake(self) -> None:
        """Make the current or next `take` return now (something else needs attention)."""
        self._ready.set()

    def take(self, timeout: float) -> list[bytes]:
        """Everything queued, waiting up to `timeout` for the first item."""
        if not self._items and not self._ready.wait(timeout):
            return []
        self._ready.clear()
        items = []
        while self._items:
            items.append(self._items.popleft())
        return items

    def __len__(self) -> int:
        return len(self._items)
