"""The finish, and a follower's look at its job, as functions: planned once per connection.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

psycopg2 sends every statement unprepared, so PostgreSQL plans it each time; a PL/pgSQL
function's statements are planned once per connection. In bench.cost at 20 callers
(pg_stat_statements with track_planning on; its times are wall time in the backend, under
the benchmark's load), planning took 0.44 ms per job through a door and 0.63 on the REST
path, most of it for these two statements:

- finish_job(...): writes a job's outcome if the job is still this worker's attempt (running,
  same worker, same attempt), and only then adds it to its model's usage of the day and its
  tokens to its owner's and its API key's ledgers of the day (db/inference.py `finish`).
  As one statement (an UPDATE and three upserts as CTEs) it was planned at every job, 0.35 ms
  a time. Still one round trip, sent in autocommit. Returns whether the outcome was written.
- request_standing(id): the job's owner and status, what a WebSocket's handshake reads
  (db/inference.py `standing`). A lookup by primary key: 0.19 ms of planning per call for
  0.03 ms of execution.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISH_SIGNATURE = (
    "finish_job(uuid, character varying, integer, character varying, text, jsonb,"
    " character varying, text, character varying, timestamp with time zone,"
    " integer, integer, bigint, bigint, bigint, bigint,"
    " date, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint)"
)


def _spend(ledger: str, owner: str) -> str:
    """Add the job's tokens to its owner's row of today in `ledger` (the daily token quota
    reads it), if the job has such an owner; `owner` is the ledger's key column, and the
    function's variable v_<owner> holds it."""
    return f"""\
    IF v_{owner} IS NOT NULL THEN
        INSERT INTO {ledger} AS t ({owner}, day, tokens, jobs)
        VALUES (v_{owner}, p_day, v_spent, 1)
        ON CONFLICT ({owner}, day) DO UPDATE SET
            tokens = t.tokens + excluded.tokens, jobs = t.jobs + excluded.jobs;
    END IF;"""


CREATE_FINISH = f"""
CREATE FUNCTION finish_job(
    p_request_id uuid,
    p_worker character varying,
    p_attempt integer,
    p_status character varying,
    p_output text,
    p_output_message jsonb,
    p_done_reason character varying,
    p_error text,
    p_error_code character varying,
    p_first_token_at timestamptz,
    p_prompt_eval_count integer,
    p_eval_count integer,
    p_total_duration bigint,
    p_load_duration bigint,
    p_prompt_eval_duration bigint,
    p_eval_duration bigint,
    p_day date,
    p_requests bigint,
    p_completed bigint,
    p_errors bigint,
    p_cancelled bigint,
    p_prompt_tokens bigint,
    p_completion_tokens bigint,
    p_total_duration_ns bigint,
    p_queue_wait_ms bigint
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_model_name character varying;
    v_user_id uuid;
    v_api_key_id uuid;
    v_spent bigint := p_prompt_tokens + p_completion_tokens;
BEGIN
    UPDATE inference_requests SET
        status = p_status,
        lease_until = NULL,
        output = p_output,
        output_message = p_output_message,
        done_reason = p_done_reason,
        prompt_eval_count = p_prompt_eval_count,
        eval_count = p_eval_count,
        total_duration = p_total_duration,
        load_duration = p_load_duration,
        prompt_eval_duration = p_prompt_eval_duration,
        eval_duration = p_eval_duration,
        error = p_error,
        error_code = p_error_code,
        first_token_at = p_first_token_at,
        completed_at = now(),
        updated_at = now()
    WHERE id = p_request_id
      AND status = 'running'
      AND worker_name = p_worker
      AND attempt = p_attempt
    RETURNING model_name, user_id, api_key_id INTO v_model_name, v_user_id, v_api_key_id;
    IF NOT FOUND THEN
        RETURN false;  -- no longer ours (swept, handed back, or another attempt's): no usage
    END IF;

    -- The rows in the order the statement this replaces wrote them (its CTEs ran last
    -- first; seen on PostgreSQL 15 with triggers logging each insert): the key's, the
    -- owner's, then the model's day, which every finish of the model shares, held for the
    -- shortest time. Workers of both versions, during a rolling update, lock in one order.
{_spend("api_key_token_usage", "api_key_id")}
{_spend("user_token_usage", "user_id")}

    INSERT INTO model_usage_stats AS u (
        model_name, day, requests, completed, errors, cancelled,
        prompt_tokens, completion_tokens, total_duration_ns, queue_wait_ms
    ) VALUES (
        v_model_name, p_day, p_requests, p_completed, p_errors, p_cancelled,
        p_prompt_tokens, p_completion_tokens, p_total_duration_ns, p_queue_wait_ms
    )
    ON CONFLICT (model_name, day) DO UPDATE SET
        requests = u.requests + excluded.requests,
        completed = u.completed + excluded.completed,
        errors = u.errors + excluded.errors,
        cancelled = u.cancelled + excluded.cancelled,
        prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = u.completion_tokens + excluded.completion_tokens,
        total_duration_ns = u.total_duration_ns + excluded.total_duration_ns,
        queue_wait_ms = u.queue_wait_ms + excluded.queue_wait_ms,
        updated_at = now();
    RETURN true;
END
$$
"""


CREATE_STANDING = """
CREATE FUNCTION request_standing(p_request_id uuid)
RETURNS TABLE (owner_id uuid, job_status character varying)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT r.user_id, r.status FROM inference_requests r WHERE r.id = p_request_id;
END
$$
"""


def upgrade() -> None:
    op.execute(CREATE_FINISH)
    op.execute(CREATE_STANDING)


def downgrade() -> None:
    op.execute("DROP FUNCTION request_standing(uuid)")
    op.execute(f"DROP FUNCTION {FINISH_SIGNATURE}")
