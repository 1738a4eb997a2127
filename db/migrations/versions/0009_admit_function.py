"""The admission as a function: one round trip with a waiting-jobs quota as without.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

- model_served(model_id, heard_since): the rule for "a node serves this model", in one
  place for SQL and Python (db/fleet.py `served` calls it): an online, undrained node with
  a heartbeat after `heard_since` holds an available replica that fits its GPU memory.
  LANGUAGE sql and STABLE, so PostgreSQL inlines it into the statements that use it.
- admit(...): inserts a job as `queued` if its model may take it and it fits its quotas
  (db/inference.py `insert_if_servable` says the rule). A waiting-jobs limit is counted
  under a lock on the owner (class 0x4F4D01, beside db.inference.RUNNING_LOCK), by a statement
  that runs after it: a VOLATILE function's statements each take a fresh snapshot, so two
  admissions of one user take turns and the limit holds exactly. As statements sent by the
  web process, that cost a transaction of two (the lock, then the insert): four round trips
  with BEGIN and COMMIT; this call is sent in autocommit, one round trip, and its
  statements are planned once per connection. Returns the inserted (id, model_id), or no
  row when nothing was inserted (refused, or the Idempotency-Key names a job already).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADMIT_SIGNATURE = (
    "admit(uuid, uuid, character varying, character varying, character varying, jsonb, jsonb,"
    " smallint, character varying, character varying, uuid, integer, integer, character varying,"
    " interval, boolean, date, integer, integer, bigint, bigint)"
)

CREATE_MODEL_SERVED = """
CREATE FUNCTION model_served(p_model_id uuid, p_heard_since timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM model_replicas r JOIN nodes n ON n.id = r.node_id
        WHERE r.model_id = p_model_id
          AND r.status = 'available'
          AND r.fits IS NOT false
          AND n.status = 'online'
          AND n.drained IS false
          AND n.last_heartbeat_at > p_heard_since
    )
$$
"""

CREATE_ADMIT = """
CREATE FUNCTION admit(
    p_id uuid,
    p_user_id uuid,
    p_model_name character varying,
    p_kind character varying,
    p_source character varying,
    p_input jsonb,
    p_options jsonb,
    p_priority smallint,
    p_idempotency_key character varying,
    p_request_hash character varying,
    p_api_key_id uuid,
    p_running_cap integer,
    p_key_running_cap integer,
    p_webhook_url character varying,
    p_stale_after interval,
    p_queue_anyway boolean,
    p_day date,
    p_max_queued_jobs integer,
    p_key_max_queued_jobs integer,
    p_tokens_per_day bigint,
    p_key_tokens_per_day bigint
) RETURNS TABLE (id uuid, model_id uuid)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_model_id uuid;
    v_status character varying;
    v_served boolean;
    v_limits jsonb;
    v_options jsonb := p_options;
    v_bound integer;
BEGIN
    IF p_max_queued_jobs IS NOT NULL OR p_key_max_queued_jobs IS NOT NULL THEN
        -- The owner's admissions take turns; the counts below see every job of theirs
        -- committed before the lock.
        PERFORM pg_advisory_xact_lock(5197057, hashtext(p_user_id::text));
    END IF;

    SELECT m.id, m.status, model_served(m.id, now() - p_stale_after), m.limits
      INTO v_model_id, v_status, v_served, v_limits
    FROM models m WHERE m.name = p_model_name;
    -- A disabled model takes nothing; an unserved (or unregistered) one only when queueing
    -- for absent models is allowed.
    IF v_status = 'disabled' OR NOT (p_queue_anyway OR coalesce(v_served, false)) THEN
        RETURN;
    END IF;

    IF p_max_queued_jobs IS NOT NULL AND (
        SELECT count(*) FROM inference_requests q
        WHERE q.user_id = p_user_id AND q.status = 'queued'
    ) >= p_max_queued_jobs THEN
        RETURN;
    END IF;
    IF p_key_max_queued_jobs IS NOT NULL AND (
        SELECT count(*) FROM inference_requests q
        WHERE q.api_key_id = p_api_key_id AND q.status = 'queued'
    ) >= p_key_max_queued_jobs THEN
        RETURN;
    END IF;
    -- The day's tokens are read without the lock: a running job spends them after it was
    -- admitted.
    IF p_tokens_per_day IS NOT NULL AND coalesce((
        SELECT t.tokens FROM user_token_usage t WHERE t.user_id = p_user_id AND t.day = p_day
    ), 0) >= p_tokens_per_day THEN
        RETURN;
    END IF;
    IF p_key_tokens_per_day IS NOT NULL AND coalesce((
        SELECT t.tokens FROM api_key_token_usage t
        WHERE t.api_key_id = p_api_key_id AND t.day = p_day
    ), 0) >= p_key_tokens_per_day THEN
        RETURN;
    END IF;

    -- The model's bounds (models.limits, set by operators): num_predict above its bound
    -- becomes the bound, and a job naming none gets the bound as its length; num_ctx is only
    -- lowered, never filled in (a larger context than the model's default costs memory).
    v_bound := (v_limits ->> 'max_num_predict')::integer;
    IF v_bound IS NOT NULL AND (
        p_options ->> 'num_predict' IS NULL OR (p_options ->> 'num_predict')::numeric > v_bound
    ) THEN
        v_options := v_options || jsonb_build_object('num_predict', v_bound);
    END IF;
    v_bound := (v_limits ->> 'max_num_ctx')::integer;
    IF v_bound IS NOT NULL AND (p_options ->> 'num_ctx')::numeric > v_bound THEN
        v_options := v_options || jsonb_build_object('num_ctx', v_bound);
    END IF;

    -- dispatched_at is set now: the web process publishes right after, and clears it if
    -- that publish fails, so the outbox sweeper takes over.
    RETURN QUERY
    INSERT INTO inference_requests AS r (
        id, user_id, model_name, kind, source, input, options, priority, idempotency_key,
        request_hash, api_key_id, running_cap, key_running_cap, webhook_url, status, attempt,
        model_id, dispatched_at
    ) VALUES (
        p_id, p_user_id, p_model_name, p_kind, p_source, p_input, v_options, p_priority,
        p_idempotency_key, p_request_hash, p_api_key_id, p_running_cap, p_key_running_cap,
        p_webhook_url, 'queued', 1, v_model_id, now()
    )
    ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING r.id, r.model_id;
END
$$
"""


def upgrade() -> None:
    op.execute(CREATE_MODEL_SERVED)
    op.execute(CREATE_ADMIT)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {ADMIT_SIGNATURE}")
    op.execute("DROP FUNCTION model_served(uuid, timestamptz)")
