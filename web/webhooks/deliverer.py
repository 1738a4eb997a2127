"""The webhook deliverer: its own process (`python -m web.webhooks`), so a slow receiver
holds one of its threads, never an inference worker's slot.

It LISTENs on omx_webhooks (the trigger NOTIFYs it when a job with a webhook ends, a
redeliver does too) and otherwise sleeps until the next retry is due. Each wake-up it takes
what is due with FOR UPDATE SKIP LOCKED (several deliverers share the queue; one that dies
leaves its claims to be taken again once their hold passes: at least once), posts each
from a thread pool of WEBHOOK_CONCURRENCY, and records the attempt with the next try.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

from config.settings import Settings
from db.models import InferenceRequest
from db.session import Database
from db.webhooks import (
    NOTIFY_CHANNEL,
    Attempted,
    Due,
    claim_due,
    give_up,
    record_attempt,
    seconds_until_due,
    secret_of,
)
from web.schemas.inference import RequestRead
from web.webhooks.guard import AllowList
from web.webhooks.sender import Sender
from web.webhooks.signing import signed_headers

log = logging.getLogger(__name__)

# Bounded labels: what became of each attempt.
ATTEMPTS = Counter(
    "ollamamax_webhook_attempts",
    "Webhook POSTs by outcome: delivered (2xx), retry (failed, tried again later), "
    "gave_up (failed, retry window over) or stale (the delivery moved meanwhile).",
    ["outcome"],
)
IDLE_POLL_S = 5.0  # a lost NOTIFY (the listener reconnecting) costs at most this much


def payload(row: InferenceRequest, event: str) -> bytes:
    """What is POSTed: a Standard Webhooks envelope whose `data` is the request exactly as
    GET /api/v1/inference/requests/<id> shows it."""
    data = RequestRead.model_validate(row).model_dump(mode="json")
    data["links"] = {
        "self": f"/api/v1/inference/requests/{row.id}",
        "ws": f"/ws/inference/{row.id}",
    }
    ended = row.completed_at or datetime.now(UTC)
    envelope = {"type": event, "timestamp": ended.isoformat(), "data": data}
    return json.dumps(envelope, separators=(",", ":")).encode()


def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """The wait after the attempt-th failure: base doubled per attempt, capped, then
    jittered between half and all of it (retries of many jobs that failed together spread
    out, and each wait is still at least half the last one's bound)."""
    bound = min(max_s, base_s * 2 ** (attempt - 1))
    return bound / 2 + random.uniform(0, bound / 2)  # noqa: S311 - jitter, not a secret


class Deliverer:
    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings, self.database = settings, database
        self.sender = Sender(
            AllowList.parse(settings.webhook_allowed_hosts),
            settings.webhook_connect_timeout_s,
            settings.webhook_read_timeout_s,
        )
        self.slots = settings.webhook_concurrency
        self.pool = ThreadPoolExecutor(self.slots, thread_name_prefix="webhook")
        self.busy = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        # Written to when an attempt ends or a stop is asked for: the loop, asleep on the
        # listener, wakes to use the free thread or schedule the retry just recorded.
        self.wake_reader, self.wake_writer = os.pipe()
        os.set_blocking(self.wake_reader, False)
        os.set_blocking(self.wake_writer, False)
        # Longer than an attempt can take: only a lost attempt's claim is taken again.
        self.hold = timedelta(
            seconds=4 * (settings.webhook_connect_timeout_s + settings.webhook_read_timeout_s) + 30
        )

    def run(self) -> None:
        listener: Any = None
        while not self.stopping.is_set():
            try:
                listener = listener or self._listen()
                wait = self._dispatch()
                self._sleep(listener, wait)
            except (SQLAlchemyError, OSError) as error:
                log.warning("webhook deliverer: database unreachable (%s); retrying", error)
                listener = self._close(listener)
                self.stopping.wait(1.0)
            except Exception as error:
                log.warning("webhook deliverer: %s; retrying", error)
                listener = self._close(listener)
                self.stopping.wait(1.0)
        self._close(listener)
        self.pool.shutdown(wait=True)
        self.sender.close()
        os.close(self.wake_reader)
        os.close(self.wake_writer)

    def stop(self) -> None:
        self.stopping.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_writer, b"!")

    def _listen(self) -> Any:
        connection = self.database.engine.raw_connection()
        driver: Any = connection.driver_connection
        driver.autocommit = True
        with driver.cursor() as cursor:
            cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return connection

    @staticmethod
    def _close(listener: Any) -> None:
        if listener is not None:
            # A LISTENing connection must not go back to the pool; a broken one may refuse.
            with contextlib.suppress(Exception):
                listener.invalidate()

    def _dispatch(self) -> float:
        """Start what is due, as far as free threads allow; the seconds to sleep after."""
        with self.lock:
            free = self.slots - self.busy
        if free <= 0:
            return IDLE_POLL_S  # the attempt that frees a thread wakes the loop
        with self.database.unit_of_work() as session:
            due = claim_due(session=session, limit=free, hold=self.hold)
            wait = seconds_until_due(session=session) if len(due) < free else 0.0
        for delivery in due:
            with self.lock:
                self.busy += 1
            self.pool.submit(self._attempt_guarded, delivery)
        return IDLE_POLL_S if wait is None else min(wait, IDLE_POLL_S)

    def _sleep(self, listener: Any, seconds: float) -> None:
        """Until a notification arrives, an attempt ends, or `seconds` pass."""
        connection = listener.driver_connection
        if seconds > 0 and not connection.notifies and not self.stopping.is_set():
            select.select([connection, self.wake_reader], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_reader, 4096)
        connection.poll()
        connection.notifies.clear()

    def _attempt_guarded(self, due: Due) -> None:
        try:
            self.attempt(due)
        except Exception:
            # Left pending: its claim's hold passes and it is tried again.
            log.exception("webhook delivery %s: attempt failed unexpectedly", due.id)
        finally:
            with self.lock:
                self.busy -= 1
            self._wake()

    def attempt(self, due: Due) -> str:
        """One POST of `due`, recorded; returns the state it left the delivery in."""
        with self.database.unit_of_work() as session:
            row = session.get(InferenceRequest, due.request_id)
            if row is None or row.user_id is None:
                give_up(session=session, due=due, reason="the job's owner no longer exists")
                return "gave_up"
            secret = secret_of(session=session, user_id=row.user_id)
            body = payload(row, due.event)
        started = datetime.now(UTC)
        headers = signed_headers(secret, f"msg_{due.id.hex}", int(time.time()), body)
        answer = self.sender.post(due.url, headers, body)
        attempted = Attempted(started, answer.duration_ms, answer.status_code, answer.error)
        retry_in = None
        if not attempted.delivered:
            wait = backoff(
                due.attempts + 1,
                self.settings.webhook_backoff_s,
                self.settings.webhook_backoff_max_s,
            )
            window_ends = due.window_started_at + timedelta(
                seconds=self.settings.webhook_retry_window_s
            )
            if datetime.now(UTC) + timedelta(seconds=wait) <= window_ends:
                retry_in = timedelta(seconds=wait)
        with self.database.unit_of_work() as session:
            state = record_attempt(session=session, due=due, attempted=attempted, retry_in=retry_in)
        outcome = {"pending": "retry"}.get(state, state)
        ATTEMPTS.labels(outcome).inc()
        log.info(
            "webhook delivery %s (request %s): attempt %s -> %s (%s)",
            due.id,
            due.request_id,
            due.attempts + 1,
            outcome,
            answer.status_code or answer.error,
        )
        return state
