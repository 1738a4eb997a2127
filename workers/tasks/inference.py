"""`inference.run(request_id)`: claim a queued job, stream it from the engine, publish its
events, write its result once.

The claim is a compare-and-set, so a duplicate delivery is a no-op. While the job runs the
process's watcher (workers/watch.py) renews its lease and looks for a cancel request; the
streaming loop acts on both between chunks. Engine faults are retried with backoff and
jitter; output already streamed is then announced as restarted, so readers never see text
twice.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from db.inference import ClaimedJob, Outcome, claim, finish
from db.models import RequestStatus
from db.recovery import hand_back
from workers import metrics, runtime
from workers.dispatch import republish
from workers.engines.base import EngineError
from workers.events import Event, event
from workers.runtime import Runtime
from workers.watch import JobWatch, cancel_key

log = logging.getLogger(__name__)

# Fields of a stored request that the engine call takes as they are.
ENGINE_FIELDS = {
    "generate": ("prompt", "system", "format", "images", "keep_alive", "suffix", "raw", "think"),
    "chat": ("messages", "tools", "format", "keep_alive", "think"),
}


class Cancelled(Exception):
    pass


class LostLease(Exception):
    pass


class HandBack(Exception):
    """The worker is stopping and the job did not finish within the grace period."""


class JobRunner:
    def __init__(self, rt: Runtime, job: ClaimedJob, watch: JobWatch) -> None:
        self.rt, self.job, self.watch = rt, job, watch
        self.settings = rt.settings
        self.max_generation_s = rt.runtime_config.current().max_generation_s
        self.deadline = time.monotonic() + self.max_generation_s
        self.parts: list[str] = []
        self.pending: list[str] = []  # streamed text not yet published
        self.first_token_at: datetime | None = None
        # This process's clock, for the time-to-first-token histogram (the claim's time comes
        # from the database, whose clock may differ from this host's).
        self.started_monotonic = time.monotonic()
        self.seconds_to_first_token: float | None = None

    def run(self) -> Outcome:
        try:
            return self._tries()
        except Cancelled:
            return Outcome(
                RequestStatus.CANCELLED, output="".join(self.parts), done_reason="cancelled"
            )

    def _tries(self) -> Outcome:
        attempts = self.settings.engine_max_attempts
        for try_number in range(1, attempts + 1):
            try:
                return self._stream_once()
            except EngineError as error:
                metrics.ENGINE_FAULTS.labels(error.code, self.rt.node_name).inc()
                self._check_stop()
                if not error.retryable or try_number == attempts:
                    return Outcome(
                        RequestStatus.FAILED,
                        output="".join(self.parts),
                        error=str(error),
                        error_code=error.code,
                    )
                log.warning(
                    "request %s: engine fault %s (try %d of %d): %s",
                    self.job.id,
                    error.code,
                    try_number,
                    attempts,
                    error,
                )
                self.pending = []  # this try's text is void either way
                if self.parts:
                    self.parts = []
                    self.rt.events.publish(
                        self.job.id,
                        "status",
                        status="restarted",
                        attempt=self.job.attempt,
                        reason=error.code,
                        user_id=self.job.user_id,
                    )
                backoff = self.settings.engine_retry_backoff_s * 2 ** (try_number - 1)
                self._pause(backoff * (0.5 + random.random()))  # noqa: S311  (jitter)
        raise AssertionError("unreachable")

    def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._check()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def _check_stop(self) -> None:
        if self.watch.lost.is_set():
            raise LostLease()
        if self.watch.cancelled.is_set():
            raise Cancelled()
        if self.rt.hand_back_due():
            raise HandBack()

    def _check(self) -> None:
        self._check_stop()
        if time.monotonic() > self.deadline:
            raise EngineError(
                f"generation exceeded {self.max_generation_s} s",
                code="timeout",
                retryable=False,
            )

    def _engine_body(self) -> dict[str, Any]:
        body = {k: self.job.input[k] for k in ENGINE_FIELDS[self.job.kind] if k in self.job.input}
        body["model"] = self.job.model_name
        if self.job.options:
            body["options"] = self.job.options
        return body

    def _stream_once(self) -> Outcome:
        """One try at the engine. The first token is published at once (it is what a caller
        waits for); later ones are coalesced for TOKEN_COALESCE_MS into one event. Text not
        yet published when the stream ends stays in `pending`, and goes out with the final
        events in one round trip."""
        coalesce_s = self.settings.token_coalesce_ms / 1000
        pending_since = 0.0
        extras: dict[str, Any] = {}
        self.pending = []
        stream = self.rt.engine.stream(self.job.kind, self._engine_body())
        try:
            for chunk in stream:
                self._check()
                _accumulate(extras, chunk.message_extras)
                if chunk.text:
                    first = self.first_token_at is None
                    if first:
                        self.first_token_at = datetime.now(UTC)
                        self.seconds_to_first_token = time.monotonic() - self.started_monotonic
                    if not self.pending:
                        pending_since = time.monotonic()
                    self.parts.append(chunk.text)
                    self.pending.append(chunk.text)
                    if not chunk.done and (first or time.monotonic() - pending_since >= coalesce_s):
                        self._publish_pending()
                if chunk.done:
                    message = (
                        {"role": "assistant", "content": "".join(self.parts), **extras}
                        if self.job.kind == "chat"
                        else None
                    )
                    return Outcome(
                        RequestStatus.COMPLETED,
                        output="".join(self.parts),
                        done_reason=chunk.done_reason,
                        metrics=chunk.metrics,
                        output_message=message,
                    )
            raise EngineError(
                "the engine ended the stream without a final chunk",
                code="engine_truncated",
                retryable=True,
            )
        finally:
            stream.close()  # tells the engine to stop if we are leaving early

    def _publish_pending(self) -> None:
        self.rt.events.publish(
            self.job.id, "token", text="".join(self.pending), attempt=self.job.attempt
        )
        self.pending = []

    def final_events(self, outcome: Outcome) -> list[Event]:
        """What readers get once the result is stored: the text not yet published, then
        `done` (completed jobs) and the terminal status."""
        job, events = self.job, []
        if self.pending:
            events.append(event(job.id, "token", text="".join(self.pending), attempt=job.attempt))
        if outcome.status == RequestStatus.COMPLETED:
            final = {k: v for k, v in (outcome.metrics or {}).items() if v is not None}
            # Tool calls belong on the final chunk of every protocol we speak.
            if calls := (outcome.output_message or {}).get("tool_calls"):
                final["tool_calls"] = calls
            events.append(
                event(job.id, "done", done_reason=outcome.done_reason, attempt=job.attempt, **final)
            )
        events.append(
            event(
                job.id,
                "status",
                status=str(outcome.status),
                attempt=job.attempt,
                user_id=job.user_id,
                error=outcome.error,
                error_code=outcome.error_code,
            )
        )
        return events


def _accumulate(extras: dict[str, Any], delta: dict[str, Any]) -> None:
    """Chat extras arrive in pieces: thinking text is a delta, tool calls come one by one."""
    if "thinking" in delta:
        extras["thinking"] = extras.get("thinking", "") + delta["thinking"]
    if "tool_calls" in delta:
        extras.setdefault("tool_calls", []).extend(delta["tool_calls"])


def _claim(rt: Runtime, job_id: uuid.UUID) -> ClaimedJob | None:
    with rt.database.unit_of_work() as session:
        return claim(
            session=session,
            request_id=job_id,
            worker_name=rt.worker_name,
            node_id=rt.node_id,
            lease=timedelta(seconds=rt.settings.lease_ttl_s),
        )


def _execute(rt: Runtime, job: ClaimedJob, watch: JobWatch) -> None:
    rt.events.publish(
        job.id,
        "status",
        status="running",
        attempt=job.attempt,
        worker=rt.worker_name,
        user_id=job.user_id,
    )
    runner = JobRunner(rt, job, watch)
    try:
        outcome = runner.run()
    except LostLease:
        log.warning("request %s: lease lost; another attempt owns it now", job.id)
        return
    except HandBack:
        _hand_back(rt, job)
        return
    except Exception as error:  # a bug or a poison input: end the job, never leave it running
        log.exception("request %s failed inside the worker", job.id)
        outcome = Outcome(
            RequestStatus.FAILED,
            output="".join(runner.parts),
            error=f"internal error: {type(error).__name__}",
            error_code="internal_error",
        )
    with rt.database.unit_of_work() as session:
        won = finish(
            session=session,
            job=job,
            worker_name=rt.worker_name,
            outcome=outcome,
            first_token_at=runner.first_token_at,
        )
    if not won:
        return
    # The rest of the text, `done`, the terminal status and the cancel flag's removal: one
    # round trip, once the result is stored (a reader told "completed" can read it).
    rt.events.publish_many(runner.final_events(outcome), delete=[cancel_key(job.id)])
    measured = outcome.metrics or {}
    metrics.job_finished(
        status=str(outcome.status),
        model=job.model_name,
        node=rt.node_name,
        seconds_to_first_token=runner.seconds_to_first_token,
        eval_count=measured.get("eval_count"),
        eval_duration_ns=measured.get("eval_duration"),
    )


def _hand_back(rt: Runtime, job: ClaimedJob) -> None:
    """Return the job to the queue (the engine stream is already closed) and publish it
    again, so another worker runs it now rather than after the lease expires."""
    with rt.database.unit_of_work() as session:
        status = hand_back(session=session, job=job, worker_name=rt.worker_name)
    if status is None:
        return
    if status == RequestStatus.CANCELLED:  # a cancel arrived while it was stopping
        rt.events.publish(
            job.id, "status", status="cancelled", attempt=job.attempt, user_id=job.user_id
        )
        rt.redis.delete(cancel_key(job.id))
        return
    log.warning("request %s: the worker is stopping; handed back to the queue", job.id)
    attempt = job.attempt + 1
    rt.events.publish(
        job.id,
        "status",
        status="restarted",
        attempt=attempt,
        reason="worker_stopping",
        user_id=job.user_id,
    )
    republish(rt.celery, rt.database, [(job.id, job.model_name, job.priority)])


@shared_task(
    name="inference.run",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # The database was unreachable before the claim: try again later instead of losing the
    # message (a failed task is still acknowledged). After the claim, the lease covers it.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def run(self: Task, request_id: str) -> None:
    rt = runtime.current()
    job_id = uuid.UUID(request_id)
    job = _claim(rt, job_id)
    if job is None:
        log.info("request %s is not waiting to run (duplicate delivery or ended)", job_id)
        return
    rt.job_started()
    metrics.job_claimed(job.model_name, job.priority, job.attempt, job.queued_at, job.started_at)
    watch = rt.watcher.watch(job.id, job.attempt)
    try:
        _execute(rt, job, watch)
    finally:
        rt.watcher.forget(job.id)
        rt.job_ended()
