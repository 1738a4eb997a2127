"""The fair claim as a function: one round trip whatever the job's caps, planned once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

- fair_claim(...): picks the fair-first waiting job of the message's model and claims it
  (db/inference.py says the rule). As statements sent by the worker, a capped claim cost two
  round trips (the pick taking the owner's lock, then the counting claim in a snapshot
  taken after it) and PostgreSQL planned the pick at each claim, about 1.5 ms of its CPU
  per job (psycopg2 sends statements unprepared). In PL/pgSQL each statement is planned
  once per connection, and a VOLATILE function's statements each take a fresh snapshot,
  so the counting claim after the lock stays exact inside the one call.

  Returns one row: `outcome` ('claimed', 'wait': a job waits but none may start now, or
  'none': the model has nothing waiting), `picked` (the job the outcome is about), then
  the claimed job's columns (NULL unless claimed).

  The advisory lock class 0x4F4D02 is db.inference.RUNNING_LOCK.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = (
    "fair_claim(uuid, character varying, uuid, interval, interval, double precision, "
    "double precision, double precision)"
)

# The owner of jobs whose account was erased (user_id NULL), as the pick groups them.
NO_OWNER = "00000000-0000-0000-0000-000000000000"
# An owner's starts in the window are counted up to this many: past it an owner is far
# behind everyone below it already, and the count's cost stays bounded.
MAX_COUNTED_STARTS = 1000

# A model's starts by owner and time, for the pick's per-owner count (replaces 0006's
# (model_name, started_at, user_id), which served a count of every start in the window).
OWNER_STARTS_INDEX = f"""
CREATE INDEX ix_inference_requests_model_owner_started ON inference_requests
    (model_name, (coalesce(user_id, '{NO_OWNER}'::uuid)), started_at)
    WHERE started_at IS NOT NULL
"""

# The pick's count of each waiting owner's starts (a CTE of CREATE_FUNCTION; 0010 replaces
# it).
STARTS_IN_WINDOW = f"""\
    ), starts AS (
        -- Each waiting owner's starts in the window, counted up to {MAX_COUNTED_STARTS} by
        -- the index on (model, owner, started_at): the cost follows the owners waiting, not
        -- the model's throughput (a count of every start in the window read 20,000 rows a
        -- claim at 70 jobs/s). The owner is written with the index's literal expression.
        SELECT h.owner, coalesce(r.n, 0) + (
            SELECT count(*) FROM (
                SELECT 1 FROM inference_requests s
                WHERE s.model_name = v_model
                  AND coalesce(s.user_id, '{NO_OWNER}'::uuid) = h.owner
                  AND s.started_at >= now() - p_window
                LIMIT {MAX_COUNTED_STARTS}
            ) recent
        ) AS n
        FROM heads h
        LEFT JOIN long_running r ON r.owner = h.owner
"""

# The claimed job's columns of a row that claimed nothing.
NOT_CLAIMED = (
    "NULL::uuid, NULL::varchar, NULL::varchar, NULL::jsonb, NULL::jsonb, NULL::integer, "
    "NULL::timestamptz, NULL::timestamptz, NULL::uuid, NULL::smallint, NULL::uuid"
)

CREATE_FUNCTION = f"""
CREATE FUNCTION fair_claim(
    p_request_id uuid,
    p_worker character varying,
    p_node uuid,
    p_lease interval,
    p_window interval,
    p_aging_s double precision,
    p_priority_credit double precision,
    p_default_weight double precision
) RETURNS TABLE (
    outcome text,
    picked uuid,
    id uuid,
    kind character varying,
    model_name character varying,
    input jsonb,
    options jsonb,
    attempt integer,
    queued_at timestamptz,
    started_at timestamptz,
    user_id uuid,
    priority smallint,
    api_key_id uuid
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    no_owner CONSTANT uuid := '{NO_OWNER}';
    v_model character varying;
    v_id uuid;
    v_user uuid;
    v_capped boolean;
BEGIN
    SELECT r.model_name INTO v_model FROM inference_requests r WHERE r.id = p_request_id;

    -- The fair-first job that may start now, locked (SKIP LOCKED: concurrent claims take
    -- the next ones). Candidates: the model's waiting jobs, no cancel asked, their owner
    -- (and key) below its running cap as this snapshot counts. First the owner with the
    -- lowest score (starts in the window per weight, minus the oldest job's wait per
    -- aging unit, minus the head priority's bounded credit), then the highest head
    -- priority, the oldest job; then that owner's job by priority and age.
    WITH running_by_user AS MATERIALIZED (
        SELECT s.user_id, count(*) AS n FROM inference_requests s
        WHERE s.status = 'running' AND s.user_id IS NOT NULL GROUP BY s.user_id
    ), running_by_key AS MATERIALIZED (
        SELECT s.api_key_id, count(*) AS n FROM inference_requests s
        WHERE s.status = 'running' AND s.api_key_id IS NOT NULL GROUP BY s.api_key_id
    ), startable AS MATERIALIZED (
        SELECT c.id, coalesce(c.user_id, no_owner) AS owner, c.priority, c.queued_at
        FROM inference_requests c
        LEFT JOIN running_by_user u ON u.user_id = c.user_id
        LEFT JOIN running_by_key k ON k.api_key_id = c.api_key_id
        WHERE c.model_name = v_model
          AND c.status = 'queued'
          AND c.cancel_requested_at IS NULL
          AND (c.running_cap IS NULL OR c.user_id IS NULL OR coalesce(u.n, 0) < c.running_cap)
          AND (c.key_running_cap IS NULL OR c.api_key_id IS NULL
               OR coalesce(k.n, 0) < c.key_running_cap)
    ), heads AS (
        SELECT c.owner, min(c.queued_at) AS oldest, max(c.priority) AS top
        FROM startable c GROUP BY c.owner
    ), long_running AS MATERIALIZED (
        -- The model's jobs running since before the window: they count as starts too.
        SELECT coalesce(s.user_id, no_owner) AS owner, count(*) AS n
        FROM inference_requests s
        WHERE s.status = 'running' AND s.model_name = v_model
          AND s.started_at < now() - p_window
        GROUP BY 1
{STARTS_IN_WINDOW}    ), first_owner AS (
        SELECT h.owner
        FROM heads h
        LEFT JOIN users w ON w.id = h.owner
        JOIN starts s ON s.owner = h.owner
        ORDER BY
            coalesce(s.n, 0)::double precision / coalesce(w.fair_share_weight, p_default_weight)
              - extract(epoch FROM now() - h.oldest)::double precision / p_aging_s
              - (h.top - 5)::double precision * p_priority_credit,
            h.top DESC, h.oldest, h.owner
        LIMIT 1
    )
    SELECT job.id, job.user_id, job.running_cap IS NOT NULL OR job.key_running_cap IS NOT NULL
      INTO v_id, v_user, v_capped
    FROM inference_requests job
    JOIN startable c ON c.id = job.id
    WHERE c.owner = (SELECT f.owner FROM first_owner f)
      AND job.status = 'queued'
      AND job.cancel_requested_at IS NULL
    ORDER BY c.priority DESC, c.queued_at, c.id
    LIMIT 1
    FOR UPDATE OF job SKIP LOCKED;

    IF v_id IS NULL THEN
        -- Nothing may start: 'wait' while a job still waits (held back by a cap, or being
        -- claimed by another worker), so the message is offered again; else 'none'.
        IF EXISTS (
            SELECT 1 FROM inference_requests r
            WHERE r.model_name = v_model AND r.status = 'queued'
              AND r.cancel_requested_at IS NULL
        ) THEN
            RETURN QUERY SELECT 'wait'::text, p_request_id, {NOT_CLAIMED};
        ELSE
            RETURN QUERY SELECT 'none'::text, p_request_id, {NOT_CLAIMED};
        END IF;
        RETURN;
    END IF;

    IF v_capped THEN
        -- The owner's claims take turns; the claim below runs in a snapshot taken after
        -- the lock, so it counts every claim of this owner committed before.
        PERFORM pg_advisory_xact_lock(5197058, hashtext(v_user::text));
    END IF;

    RETURN QUERY
    UPDATE inference_requests r
    SET status = 'running',
        worker_name = p_worker,
        node_id = p_node,
        lease_until = now() + p_lease,
        started_at = now(),
        dispatched_at = coalesce(r.dispatched_at, now())
    WHERE r.id = v_id
      AND r.status = 'queued'
      AND r.cancel_requested_at IS NULL
      AND (NOT v_capped OR (
        (r.running_cap IS NULL OR (
            SELECT count(*) FROM inference_requests mine
            WHERE mine.status = 'running' AND mine.user_id = r.user_id) < r.running_cap)
        AND (r.key_running_cap IS NULL OR (
            SELECT count(*) FROM inference_requests mine
            WHERE mine.status = 'running' AND mine.api_key_id = r.api_key_id)
            < r.key_running_cap)))
    RETURNING 'claimed'::text, v_id, r.id, r.kind, r.model_name, r.input, r.options, r.attempt,
        r.queued_at, r.started_at, r.user_id, r.priority, r.api_key_id;
    IF NOT FOUND THEN
        -- At its owner's cap once counted under the lock: offered again.
        RETURN QUERY SELECT 'wait'::text, v_id, {NOT_CLAIMED};
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(OWNER_STARTS_INDEX)
    op.drop_index("ix_inference_requests_model_started", table_name="inference_requests")
    op.execute(CREATE_FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
    op.create_index(
        "ix_inference_requests_model_started",
        "inference_requests",
        ["model_name", "started_at", "user_id"],
        postgresql_where=sa.text("started_at IS NOT NULL"),
    )
    op.drop_index("ix_inference_requests_model_owner_started", table_name="inference_requests")
