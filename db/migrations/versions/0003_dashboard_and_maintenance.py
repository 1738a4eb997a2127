"""Dashboard materialized view and the maintenance functions operators and beat call.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

- dashboard_stats: one row of fleet-wide counts, refreshed concurrently (readers
  never block) by refresh_dashboard_stats().
- database_health_check(): connection use, cache hit ratio, long and idle
  transactions, bloat, wraparound age and audit partition coverage, each
  with a status of ok / warning / critical.
- get_table_stats(): size, scans and dead tuples per table.
- get_slow_queries(min_ms): from pg_stat_statements when it is installed and
  loaded; otherwise an empty result and a NOTICE, never an error.
- cleanup_old_data(retention): deletes finished requests, dead sessions and
  keys, and drops whole audit partitions older than the retention. Aggregates
  in model_usage_stats are kept. It runs as one transaction (a function cannot
  commit between steps): beat calls it at a quiet hour.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every part reads through an index or a small table, so a refresh stays cheap however
# many requests are kept: live counts use the partial index on queued/running requests,
# the last 24 hours use the created_at index, and all-time totals come from the daily
# aggregates in model_usage_stats (which also outlive retention cleanup).
CREATE_DASHBOARD_STATS = """
CREATE MATERIALIZED VIEW dashboard_stats AS
SELECT
    1 AS id,
    u.users_total, u.users_active,
    m.models_total, m.models_available,
    n.nodes_total, n.nodes_online, n.slots_total,
    live.requests_queued, live.requests_running,
    recent.requests_24h, recent.completed_24h, recent.failed_24h, recent.cancelled_24h,
    recent.prompt_tokens_24h, recent.completion_tokens_24h,
    recent.avg_queue_wait_ms_24h, recent.avg_latency_ms_24h,
    usage.requests_total, usage.completed_total, usage.errors_total,
    usage.prompt_tokens_total, usage.completion_tokens_total,
    now() AS refreshed_at
FROM
    (SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS users_total,
            count(*) FILTER (WHERE deleted_at IS NULL AND is_active) AS users_active
       FROM users) AS u,
    (SELECT count(*) AS models_total,
            count(*) FILTER (WHERE status = 'available') AS models_available
       FROM models) AS m,
    (SELECT count(*) AS nodes_total,
            count(*) FILTER (WHERE status = 'online') AS nodes_online,
            coalesce(sum(slots) FILTER (WHERE status = 'online' AND NOT drained), 0)::bigint
                AS slots_total
       FROM nodes) AS n,
    (SELECT count(*) FILTER (WHERE status = 'queued') AS requests_queued,
            count(*) FILTER (WHERE status = 'running') AS requests_running
       FROM inference_requests
      WHERE status IN ('queued', 'running')) AS live,
    (SELECT count(*) AS requests_24h,
            count(*) FILTER (WHERE status = 'completed') AS completed_24h,
            count(*) FILTER (WHERE status = 'failed') AS failed_24h,
            count(*) FILTER (WHERE status = 'cancelled') AS cancelled_24h,
            coalesce(sum(prompt_eval_count), 0)::bigint AS prompt_tokens_24h,
            coalesce(sum(eval_count), 0)::bigint AS completion_tokens_24h,
            round((avg(extract(epoch FROM started_at - queued_at) * 1000))::numeric, 1)
                AS avg_queue_wait_ms_24h,
            round((avg(extract(epoch FROM completed_at - queued_at) * 1000)
                FILTER (WHERE status = 'completed'))::numeric, 1) AS avg_latency_ms_24h
       FROM inference_requests
      WHERE created_at >= now() - interval '24 hours') AS recent,
    (SELECT coalesce(sum(requests), 0)::bigint AS requests_total,
            coalesce(sum(completed), 0)::bigint AS completed_total,
            coalesce(sum(errors), 0)::bigint AS errors_total,
            coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens_total,
            coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens_total
       FROM model_usage_stats) AS usage
WITH DATA;

CREATE UNIQUE INDEX uq_dashboard_stats_id ON dashboard_stats (id);

CREATE FUNCTION refresh_dashboard_stats() RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY dashboard_stats;
    RETURN (SELECT refreshed_at FROM dashboard_stats);
END;
$$;
"""

CREATE_HEALTH_CHECK = """
CREATE FUNCTION database_health_check()
RETURNS TABLE (check_name text, status text, value numeric, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    max_conn numeric := current_setting('max_connections')::numeric;
    used_conn numeric;
    hit_ratio numeric;
    next_month text := 'audit_log_entries_'
        || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month', 'YYYY_MM');
BEGIN
    SELECT count(*) INTO used_conn FROM pg_stat_activity WHERE backend_type = 'client backend';
    RETURN QUERY SELECT 'connections'::text,
        CASE WHEN used_conn >= max_conn * 0.95 THEN 'critical'
             WHEN used_conn >= max_conn * 0.80 THEN 'warning' ELSE 'ok' END,
        used_conn, format('%s of %s connections in use', used_conn, max_conn);

    SELECT round(blks_hit::numeric / nullif(blks_hit + blks_read, 0), 4) INTO hit_ratio
      FROM pg_stat_database WHERE datname = current_database();
    RETURN QUERY SELECT 'cache_hit_ratio'::text,
        CASE WHEN hit_ratio IS NOT NULL AND hit_ratio < 0.90 THEN 'warning' ELSE 'ok' END,
        hit_ratio, 'share of block reads served from shared buffers';

    RETURN QUERY SELECT 'long_running_queries'::text,
        CASE WHEN count(*) > 0 THEN 'warning' ELSE 'ok' END, count(*)::numeric,
        'active statements running longer than 5 minutes'
      FROM pg_stat_activity
     WHERE state = 'active' AND now() - query_start > interval '5 minutes'
       AND datname = current_database();

    RETURN QUERY SELECT 'idle_in_transaction'::text,
        CASE WHEN count(*) > 0 THEN 'warning' ELSE 'ok' END, count(*)::numeric,
        'sessions idle inside a transaction for more than 1 minute'
      FROM pg_stat_activity
     WHERE state LIKE 'idle in transaction%' AND now() - state_change > interval '1 minute'
       AND datname = current_database();

    RETURN QUERY SELECT 'dead_tuple_ratio'::text,
        CASE WHEN coalesce(max(ratio), 0) > 0.2 THEN 'warning' ELSE 'ok' END,
        round(coalesce(max(ratio), 0), 4), 'worst dead/live tuple ratio among tables over 1000 rows'
      FROM (SELECT n_dead_tup::numeric / nullif(n_live_tup, 0) AS ratio
              FROM pg_stat_user_tables WHERE n_live_tup > 1000) AS t;

    RETURN QUERY SELECT 'transaction_id_age'::text,
        CASE WHEN age(datfrozenxid) > 1500000000 THEN 'critical'
             WHEN age(datfrozenxid) > 1000000000 THEN 'warning' ELSE 'ok' END,
        age(datfrozenxid)::numeric, 'transactions since the oldest unfrozen xid (wraparound)'
      FROM pg_database WHERE datname = current_database();

    RETURN QUERY SELECT 'audit_partitions'::text,
        CASE WHEN to_regclass(next_month) IS NULL THEN 'warning' ELSE 'ok' END,
        (SELECT count(*) FROM pg_inherits
          WHERE inhparent = 'audit_log_entries'::regclass)::numeric,
        CASE WHEN to_regclass(next_month) IS NULL
             THEN format('%s is missing: run create_audit_partitions()', next_month)
             ELSE 'next month''s partition exists' END;

    RETURN QUERY SELECT 'audit_default_partition_rows'::text,
        CASE WHEN count(*) > 0 THEN 'warning' ELSE 'ok' END, count(*)::numeric,
        'audit rows outside any monthly partition'
      FROM audit_log_entries_default;

    RETURN QUERY SELECT 'database_size_bytes'::text, 'ok'::text,
        pg_database_size(current_database())::numeric,
        pg_size_pretty(pg_database_size(current_database()));
END;
$$;
"""

CREATE_TABLE_STATS = """
CREATE FUNCTION get_table_stats()
RETURNS TABLE (
    table_name text, row_estimate bigint, total_bytes bigint, table_bytes bigint,
    index_bytes bigint, seq_scans bigint, index_scans bigint, dead_tuples bigint,
    last_vacuum timestamptz, last_analyze timestamptz
)
LANGUAGE sql STABLE AS $$
    SELECT s.relname::text,
           s.n_live_tup,
           pg_total_relation_size(s.relid),
           pg_relation_size(s.relid),
           pg_indexes_size(s.relid),
           s.seq_scan,
           coalesce(s.idx_scan, 0),
           s.n_dead_tup,
           greatest(s.last_vacuum, s.last_autovacuum),
           greatest(s.last_analyze, s.last_autoanalyze)
      FROM pg_stat_user_tables AS s
     WHERE s.schemaname = current_schema()
     ORDER BY pg_total_relation_size(s.relid) DESC, s.relname
$$;
"""

CREATE_SLOW_QUERIES = """
CREATE FUNCTION get_slow_queries(min_ms double precision DEFAULT 100, max_rows integer DEFAULT 50)
RETURNS TABLE (
    query text, calls bigint, total_ms double precision, mean_ms double precision,
    max_ms double precision, rows bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    extension_schema text;
BEGIN
    SELECT n.nspname INTO extension_schema
      FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_stat_statements';
    IF extension_schema IS NULL THEN
        RAISE NOTICE 'pg_stat_statements is not installed: no slow-query data';
        RETURN;
    END IF;
    BEGIN
        RETURN QUERY EXECUTE format(
            'SELECT s.query, s.calls, s.total_exec_time, s.mean_exec_time, s.max_exec_time, s.rows'
            ' FROM %I.pg_stat_statements AS s'
            ' WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())'
            '   AND s.mean_exec_time >= $1'
            ' ORDER BY s.mean_exec_time DESC LIMIT $2',
            extension_schema)
        USING min_ms, max_rows;
    EXCEPTION
        -- Installed but not in shared_preload_libraries, or an incompatible version.
        WHEN object_not_in_prerequisite_state OR undefined_column OR undefined_table THEN
            RAISE NOTICE 'pg_stat_statements is not usable: %', SQLERRM;
            RETURN;
    END;
END;
$$;
"""

CREATE_CLEANUP = """
CREATE FUNCTION cleanup_old_data(retention interval)
RETURNS TABLE (item text, removed bigint)
LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := now() - retention;
    part record;
    part_year int;
    part_month int;
    partition_end timestamptz;
    partition_rows bigint;
    dropped_rows bigint := 0;
    n bigint;
BEGIN
    IF retention < interval '1 day' THEN
        RAISE EXCEPTION 'retention must be at least 1 day, got %', retention;
    END IF;

    DELETE FROM inference_requests
     WHERE status IN ('completed', 'failed', 'cancelled')
       AND coalesce(completed_at, updated_at) < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    item := 'inference_requests'; removed := n; RETURN NEXT;

    DELETE FROM user_sessions WHERE revoked_at < cutoff OR expires_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    item := 'user_sessions'; removed := n; RETURN NEXT;

    DELETE FROM api_keys WHERE revoked_at < cutoff OR expires_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    item := 'api_keys'; removed := n; RETURN NEXT;

    -- Whole monthly partitions that end before the cutoff are dropped, not scanned.
    FOR part IN
        SELECT c.relname::text AS name
          FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'audit_log_entries'::regclass
           AND c.relname ~ '^audit_log_entries_[0-9]{4}_[0-9]{2}$'
    LOOP
        -- The partition ends at the next UTC month start, computed in integers: interval
        -- arithmetic on timestamptz would follow the session's TimeZone (and its DST).
        part_year := split_part(right(part.name, 7), '_', 1)::int;
        part_month := split_part(right(part.name, 7), '_', 2)::int;
        partition_end := make_timestamptz(
            part_year + part_month / 12, part_month % 12 + 1, 1, 0, 0, 0, 'UTC');
        CONTINUE WHEN partition_end > cutoff;
        EXECUTE format('SELECT count(*) FROM %I', part.name) INTO partition_rows;
        EXECUTE format('DROP TABLE %I', part.name);
        dropped_rows := dropped_rows + partition_rows;
    END LOOP;
    DELETE FROM audit_log_entries_default WHERE occurred_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    item := 'audit_log_entries'; removed := dropped_rows + n; RETURN NEXT;
END;
$$;
"""


def upgrade() -> None:
    op.execute(CREATE_DASHBOARD_STATS)
    op.execute(CREATE_HEALTH_CHECK)
    op.execute(CREATE_TABLE_STATS)
    op.execute(CREATE_SLOW_QUERIES)
    op.execute(CREATE_CLEANUP)


def downgrade() -> None:
    op.execute("DROP FUNCTION cleanup_old_data(interval)")
    op.execute("DROP FUNCTION get_slow_queries(double precision, integer)")
    op.execute("DROP FUNCTION get_table_stats()")
    op.execute("DROP FUNCTION database_health_check()")
    op.execute("DROP FUNCTION refresh_dashboard_stats()")
    op.execute("DROP MATERIALIZED VIEW dashboard_stats")
