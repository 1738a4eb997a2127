"""`inference.run(request_id)`: claim a queued job, stream it from the engine, publish its
events, write its result once.

The claim is a compare-and-set, so a duplicate delivery is a no-op. While the job runs the
process's watcher (workers/watch.py) renews its lease and looks for a cancel request; the
streaming loop acts on both between chunks. Engine faults are retried with backoff and
jitter; output already streamed is then announced as restarted, so readers never see text
twice.

Outages of what a job depends on end no job (docs/operations.md, "Faults"):
- Redis: its events wait and go out in order when Redis returns (workers/job_events.py);
  past EVENT_HOLD_S the job is handed back to the queue.
- PostgreSQL: only the claim is retried as a task (nothing is held yet); an outcome that
  cannot be stored is kept and written again with backoff while the lease lasts.
- The engine: a job that cannot reach it is handed back, and the worker takes no new jobs
  until it answers (workers/engine_health.py).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from celery import Task, shared_task
from sqlalchemy import String
from sqlalchemy.exc import DataError, InterfaceError, OperationalError

from db.inference import AtRunningCap, ClaimedJob, FairShare, Outcome, claim, finish
from db.models import InferenceRequest, RequestStatus
from db.recovery import hand_back
from db.session import Executor
from workers import metrics, routing, runtime
from workers.dispatch import hand_to_node, republish
from workers.engines.base import EngineError
from workers.events import Event, event
from workers.job_events import EventsOnHold, JobEvents
from workers.routing import model_of_queue
from workers.runtime import Runtime
from workers.watch import JobWatch, cancel_key

log = logging.getLogger(__name__)

# Fields of a stored request that the engine call takes as they are.
ENGINE_FIELDS = {
    "generate": ("prompt", "system", "format", "images", "keep_alive", "suffix", "raw", "think"),
    "chat": (
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "format",
        "keep_alive",
        "think",
    ),
    "embed": ("input", "truncate", "dimensions", "keep_alive"),
}


class Cancelled(Exception):
    pass


class LostLease(Exception):
    pass


class HandBack(Exception):
    """The worker is stopping and the job did not finish within the grace period."""


class EngineDown(Exception):
    """The engine does not answer: the job goes back to the queue, not to its end."""


# A done_reason is the engine's word, kept as said up to its column's width: Ollama and the
# OpenAI-compatible servers we know say stop, length, load or unload, and a longer word from
# another engine must not make the result unstorable.
DONE_REASON_WIDTH = cast(String, InferenceRequest.__table__.c.done_reason.type).length
# PostgreSQL keeps no NUL in text, nor \u0000 in JSONB, and a model can emit one (a
# tokenizer's byte fallback): readers and the stored result get U+FFFD instead, as a text
# decoder shows a byte it cannot read.
NUL, REPLACEMENT = "\x00", "\ufffd"
# The error code of a job whose result PostgreSQL refused (see _store).
UNSTORABLE = "unstorable_result"

# Retrying the claim (PostgreSQL unreachable before it): the task's countdown, doubled per retry.
CLAIM_RETRY_S, CLAIM_RETRY_MAX_S, CLAIM_RETRIES = 1.0, 60.0, 8
# Storing an outcome while PostgreSQL is unreachable: the first pause, doubled up to the last.
STORE_RETRY_S, STORE_RETRY_MAX_S = 0.1, 2.0


class JobRunner:
    def __init__(self, rt: Runtime, job: ClaimedJob, watch: JobWatch, events: JobEvents) -> None:
        self.rt, self.job, self.watch, self.events = rt, job, watch, events
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
        self.answered = False  # the engine sent something on the current try

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
                self._check_engine_down(error, try_number)
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
                    self.events.publish(
                        "status",
                        status="restarted",
                        attempt=self.job.attempt,
                        reason=error.code,
                        user_id=self.job.user_id,
                    )
                backoff = self.settings.engine_retry_backoff_s * 2 ** (try_number - 1)
                self._pause(backoff * (0.5 + random.random()))  # noqa: S311  (jitter)
        raise AssertionError("unreachable")

    def _check_engine_down(self, error: EngineError, try_number: int) -> None:
        """Not even a connection, twice in a row (or the engine is known to be down): the
        engine is down, and this job goes back to the queue unless it has been down so long
        that jobs stop waiting for it."""
        if error.code != "engine_unreachable" or self.answered:
            return
        health = self.rt.engine_health
        if try_number > 1 or health.down:
            health.report_down(str(error))
        if health.waiting():
            raise EngineDown(str(error))

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
        self.answered = False
        stream = self.rt.engine.stream(self.job.kind, self._engine_body())
        try:
            for chunk in stream:
                if not self.answered:
                    self.answered = True
                    self.rt.engine_health.report_up()
                self._check()
                _accumulate(extras, chunk.message_extras)
                if text := _without_nul(chunk.text):
                    first = self.first_token_at is None
                    if first:
                        self.first_token_at = datetime.now(UTC)
                        self.seconds_to_first_token = time.monotonic() - self.started_monotonic
                    if not self.pending:
                        pending_since = time.monotonic()
                    self.parts.append(text)
                    self.pending.append(text)
                    due = first or time.monotonic() - pending_since >= coalesce_s
                    if not chunk.done and due and self.events.ready():
                        self._publish_pending()
                if chunk.done:
                    _name_tool_calls(extras, self.job.id)
                    message = self._result_message(extras)
                    return Outcome(
                        RequestStatus.COMPLETED,
                        output="".join(self.parts),
                        done_reason=chunk.done_reason and chunk.done_reason[:DONE_REASON_WIDTH],
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

    def _result_message(self, extras: dict[str, Any]) -> dict[str, Any] | None:
        """What a job stores beside its text: a chat's message (tool calls, thinking), an
        embedding job's vectors; nothing for a completion."""
        if self.job.kind == "chat":
            return {"role": "assistant", "content": "".join(self.parts), **extras}
        if self.job.kind == "embed":
            return {"embeddings": extras.get("embeddings", [])}
        return None

    def _publish_pending(self) -> None:
        text, self.pending = "".join(self.pending), []
        self.events.publish("token", text=text, attempt=self.job.attempt)

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


def _without_nul(text: str) -> str:
    return text.replace(NUL, REPLACEMENT)


def _accumulate(extras: dict[str, Any], delta: dict[str, Any]) -> None:
    """Chat extras arrive in pieces: thinking text is a delta, tool calls come one by one."""
    if "thinking" in delta:
        extras["thinking"] = extras.get("thinking", "") + _without_nul(delta["thinking"] or "")
    if "tool_calls" in delta:
        extras.setdefault("tool_calls", []).extend(delta["tool_calls"])
    if "embeddings" in delta:  # an embedding job's one answer
        extras["embeddings"] = delta["embeddings"]


def _name_tool_calls(extras: dict[str, Any], job_id: uuid.UUID) -> None:
    """Each tool call keeps the id its engine gave it, or gets one here, once and for good
    (`call_<the job's first 12 hex>_<index>`), and its index, its place in the answer (in
    `function`, where Ollama writes it): the stored message, the `done` event and every door
    then name a call alike."""
    for index, call in enumerate(extras.get("tool_calls") or []):
        if not call.get("id"):
            call["id"] = f"call_{job_id.hex[:12]}_{index}"
        function = {k: v for k, v in (call.get("function") or {}).items() if k != "index"}
        call["function"] = {"index": index, **function}


def _fair_share(rt: Runtime) -> FairShare | None:
    """How the claim orders a model's waiting jobs; None (FAIR_SHARE=false): the message's
    own job, as before fair share."""
    settings = rt.settings
    if not settings.fair_share:
        return None
    return FairShare(
        window=timedelta(seconds=settings.fair_share_window_s),
        aging_s=settings.fair_share_aging_s,
        priority_credit=settings.fair_share_priority_credit,
        default_weight=rt.runtime_config.current().fair_share_default_weight,
    )


def _claim(rt: Runtime, job_id: uuid.UUID) -> ClaimedJob | None:
    fair = _fair_share(rt)
    # The fair claim is one statement (a call of fair_claim()): sent in autocommit, it is
    # one round trip; the exact claim of a capped job takes a lock first, in a transaction.
    unit: AbstractContextManager[Executor] = (
        rt.database.one_call() if fair else rt.database.unit_of_work()
    )
    with unit as executor:
        return claim(
            executor=executor,
            request_id=job_id,
            worker_name=rt.worker_name,
            node_id=rt.node_id,
            lease=timedelta(seconds=rt.settings.lease_ttl_s),
            fair=fair,
        )


def _execute(rt: Runtime, job: ClaimedJob, watch: JobWatch) -> None:
    events = JobEvents(rt.events, rt.backlog, job.id, job.attempt, rt.settings.event_hold_s)
    runner = JobRunner(rt, job, watch, events)
    try:
        if job.attempt > 1:
            # Whoever requeued the job said so already, unless Redis was away then: readers
            # drop the text of earlier attempts on this (a second one changes nothing).
            events.publish(
                "status",
                status="restarted",
                attempt=job.attempt,
                reason="attempt_started",
                user_id=job.user_id,
            )
        events.publish(
            "status",
            status="running",
            attempt=job.attempt,
            worker=rt.worker_name,
            user_id=job.user_id,
        )
        outcome = runner.run()
    except LostLease:
        log.warning("request %s: lease lost; another attempt owns it now", job.id)
        return
    except HandBack:
        _hand_back(rt, job, events, reason="worker_stopping")
        return
    except EventsOnHold as error:
        log.warning("request %s: handed back: %s", job.id, error)
        _hand_back(rt, job, events, reason="events_unavailable")
        return
    except EngineDown as error:
        _hand_back(
            rt,
            job,
            events,
            reason="engine_unreachable",
            ends_after=rt.settings.job_max_attempts,
            error=f"the engine did not answer on any attempt: {error}",
        )
        return
    except Exception as error:  # a bug or a poison input: end the job, never leave it running
        log.exception("request %s failed inside the worker", job.id)
        outcome = Outcome(
            RequestStatus.FAILED,
            output="".join(runner.parts),
            error=f"internal error: {type(error).__name__}",
            error_code="internal_error",
        )
    stored = _store(rt, job, watch, outcome, runner.first_token_at)
    if stored is None:
        return
    outcome = stored
    # The rest of the text, `done`, the terminal status and the cancel flag's removal: one
    # round trip, once the result is stored (a reader told "completed" can read it).
    events.finish(runner.final_events(outcome), delete=[cancel_key(job.id)])
    measured = outcome.metrics or {}
    metrics.job_finished(
        status=str(outcome.status),
        model=job.model_name,
        node=rt.node_name,
        seconds_to_first_token=runner.seconds_to_first_token,
        eval_count=measured.get("eval_count"),
        eval_duration_ns=measured.get("eval_duration"),
    )


def _store(
    rt: Runtime,
    job: ClaimedJob,
    watch: JobWatch,
    outcome: Outcome,
    first_token_at: datetime | None,
) -> Outcome | None:
    """Write the outcome; what was stored if this attempt's write won, None if not. While
    PostgreSQL is unreachable the outcome is kept and written again, with backoff, for as
    long as the lease lasts: a short outage never has the job generated twice. Past the
    lease the sweeper may have given the job to another worker, and the fence in `finish`
    would refuse the write. An outcome PostgreSQL refuses for what it holds (a value out of
    a column's range, a NUL in a tool call's arguments) ends the job as failed, saying so:
    left running, it would wait for the lease sweep and fail the same way on every
    attempt."""
    pause = STORE_RETRY_S
    while True:
        try:
            with rt.database.one_call() as connection:  # one round trip, no BEGIN/COMMIT
                stored = finish(
                    executor=connection,
                    job=job,
                    worker_name=rt.worker_name,
                    outcome=outcome,
                    first_token_at=first_token_at,
                )
            if not stored:  # the fence: swept, handed on or ended while this attempt ran
                log.warning(
                    "request %s: outcome of attempt %d refused: the job is no longer ours",
                    job.id,
                    job.attempt,
                )
            return outcome if stored else None
        except (OperationalError, InterfaceError) as error:
            left = watch.renewed_at + rt.settings.lease_ttl_s - time.monotonic()
            if left <= 0:
                log.error(
                    "request %s: its outcome could not be stored within its lease (%s); "
                    "the lease sweep will queue it again",
                    job.id,
                    error.__class__.__name__,
                )
                return None
            log.warning(
                "request %s: storing its outcome failed (%s); trying again in %.1f s",
                job.id,
                error.__class__.__name__,
                min(pause, left),
            )
            time.sleep(min(pause, left))
            pause = min(pause * 2, STORE_RETRY_MAX_S)
        except (DataError, ValueError) as error:  # ValueError: psycopg2's, for a NUL
            if outcome.error_code == UNSTORABLE:
                raise  # even the bare failure was refused: a bug, for the lease sweep
            log.exception("request %s: its outcome could not be stored", job.id)
            outcome = Outcome(
                RequestStatus.FAILED,
                output="",
                error=f"the engine's answer could not be stored: {_first_line(error)}",
                error_code=UNSTORABLE,
            )


def _first_line(error: Exception) -> str:
    """What PostgreSQL (or the driver) said, without SQLAlchemy's statement and parameters."""
    said = str(getattr(error, "orig", None) or error).strip()
    return said.splitlines()[0] if said else type(error).__name__


def _hand_back(
    rt: Runtime,
    job: ClaimedJob,
    events: JobEvents,
    *,
    reason: str,
    ends_after: int | None = None,
    error: str | None = None,
) -> None:
    """Return the job to the queue (the engine stream is already closed) and publish it
    again, so another worker runs it now rather than after the lease expires. With
    `ends_after`, a job on that attempt fails with `error` instead (code `reason`)."""
    try:
        with rt.database.unit_of_work() as session:
            status = hand_back(
                session=session,
                job=job,
                worker_name=rt.worker_name,
                max_attempts=ends_after,
                error=error,
                error_code=reason,
            )
    except (OperationalError, InterfaceError) as db_error:
        log.warning(
            "request %s: could not hand it back (%s); the lease sweep will",
            job.id,
            db_error.__class__.__name__,
        )
        return
    if status is None:
        return
    done = [cancel_key(job.id)]
    if status in (RequestStatus.CANCELLED, RequestStatus.FAILED):  # cancelled meanwhile, or spent
        ended = event(
            job.id,
            "status",
            status=status,
            attempt=job.attempt,
            user_id=job.user_id,
            error=error if status == RequestStatus.FAILED else None,
            error_code=reason if status == RequestStatus.FAILED else None,
        )
        events.finish([ended], delete=done)
        metrics.job_finished(
            status=str(status),
            model=job.model_name,
            node=rt.node_name,
            seconds_to_first_token=None,
            eval_count=None,
            eval_duration_ns=None,
        )
        return
    log.warning("request %s: handed back to the queue (%s)", job.id, reason)
    attempt = job.attempt + 1
    restarted = event(
        job.id, "status", status="restarted", attempt=attempt, reason=reason, user_id=job.user_id
    )
    # Not kept for later: published after the next attempt's events, it would void them.
    events.finish([restarted], delete=[], or_later=False)
    republish(rt.celery, rt.database, [(job.id, job.model_name, job.priority)])


def _routed_elsewhere(task: Task, rt: Runtime, request_id: str, routed: dict[str, Any]) -> bool:
    """Warm-model-first routing (workers/routing.py), before the claim and without a round
    trip unless the job moves: True when it went to a node that has its model loaded;
    raises Retry to offer it again while every such node is busy (its wait bounded)."""
    delivery = task.request.delivery_info or {}
    model = model_of_queue(delivery.get("routing_key"))
    since = float(routed.get("since") or routing.clock())
    waited = max(0.0, routing.clock() - since)
    decision = rt.router.decide(model, routed.get("handed_by"), waited)
    if decision.kind == routing.WAITING:
        kept = {k: v for k, v in (task.request.kwargs or {}).items() if k != "request_id"}
        again = {**kept, "routed": {"since": since}}
        raise task.retry(countdown=decision.retry_in, args=[request_id], kwargs=again)
    if decision.kind == routing.HANDED:
        assert decision.node is not None
        handed = {"since": since, "handed_by": rt.node_name}
        if hand_to_node(rt.celery, request_id, decision.node, handed, delivery.get("priority")):
            rt.router.record(request_id, model, decision, waited)
            return True
        decision = routing.Decision(routing.COLD_NONE_WARM)  # the broker refused: run it here
    rt.router.record(request_id, model, decision, waited)
    if model is not None:
        rt.router.note_loaded(model)
    return False


@shared_task(
    name="inference.run",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # Waiting is not failing: a job held back (its engine down, its owner at their running
    # quota) is offered again for as long as it must wait. Celery's default, 3, would drop
    # the message after three offers and leave the job queued for the sweeper. The claim's
    # own retries are bounded below, by a count of their own.
    max_retries=None,
)
def run(
    self: Task,
    request_id: str,
    claim_failures: int = 0,
    routed: dict[str, Any] | None = None,
) -> None:
    rt = runtime.current()
    job_id = uuid.UUID(request_id)
    if rt.engine_health.waiting():
        # Taken before the heartbeat stopped this worker's consumers: leave the job queued,
        # its attempt unspent, and look again after a probe (bounded by ENGINE_DOWN_GRACE_S:
        # then `waiting` is over and the job runs, or fails as it always did).
        raise self.retry(countdown=rt.settings.engine_probe_s)
    if _routed_elsewhere(self, rt, request_id, routed or {}):
        return
    try:
        job = _claim(rt, job_id)
    except AtRunningCap:
        # Its owner runs as many jobs as their quota allows: the job stays queued, its
        # attempt unspent, and is offered again shortly (to whichever worker is free).
        raise self.retry(countdown=rt.settings.quota_wait_retry_s) from None
    except (OperationalError, InterfaceError) as error:
        # The database was unreachable before the claim: try again later instead of losing
        # the message (a failed task is still acknowledged). Only the claim: past it, the
        # job's own retries and its lease cover every write (see _store and _hand_back).
        # Counted apart from the offers above, which may be many.
        if claim_failures >= CLAIM_RETRIES:
            raise
        countdown = min(CLAIM_RETRY_S * 2**claim_failures, CLAIM_RETRY_MAX_S)
        again = {"request_id": request_id, "claim_failures": claim_failures + 1}
        raise self.retry(exc=error, countdown=countdown, kwargs=again) from error
    if job is None:
        if (self.request.delivery_info or {}).get("redelivered"):
            # RabbitMQ gave it again: its first worker's connection closed, or that worker
            # held it past the server's consumer_timeout (docs/deploy.md).
            log.warning(
                "request %s was delivered again but is not waiting to run; if it is still "
                "running, the broker's consumer_timeout is shorter than the job",
                job_id,
            )
        else:
            log.info("request %s is not waiting to run (duplicate delivery or ended)", job_id)
        return
    if job.id != job_id:
        # Fair share: the message woke this worker for its model, and the claim took the
        # fair-first job; the message's own job waits for a later one (docs/pipeline.md).
        # From here on every use is the claimed job's.
        log.info("request %s: message of request %s claimed it (fair share)", job.id, job_id)
    rt.job_started()
    metrics.job_claimed(job.model_name, job.priority, job.attempt, job.queued_at, job.started_at)
    watch = rt.watcher.watch(job.id, job.attempt)
    try:
        _execute(rt, job, watch)
    finally:
        rt.watcher.forget(job.id)
        rt.job_ended()
