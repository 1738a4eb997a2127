"""Audit trail: monthly partitions, a default partition, and a row-change trigger.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

- create_audit_partitions(months_ahead, from_month) creates the missing monthly
  partitions (UTC month bounds), moving any rows that had landed in the default
  partition into their new home first, so it is safe to run at any time and
  from two beat processes at once.
- The default partition catches rows for months nobody created yet: an audit
  insert never fails for want of a partition.
- audit_row_change() records INSERT/UPDATE/DELETE on users, models, nodes and
  system_config with secrets masked. Its trigger arguments list the columns
  whose changes are noise (heartbeats, counters), so an update touching only
  those writes nothing. The acting user, IP, user agent and request id come
  from transaction-local settings (see db.session.set_audit_context).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Key names whose values are secrets (after lower-casing and '-' -> '_'); anchored, so
# `max_tokens` stays readable. Kept in step with config.logging.SECRET_KEY_PATTERN.
SECRET_KEY_PATTERN = (
    "(^|_)(password|passwd|pwd|secret|secret_key|api_key|apikey|token|access_token|"
    "refresh_token|id_token|authorization|cookie|set_cookie|credentials?|"
    "password_hash|key_hash)$"
)

CREATE_PARTITION_FUNCTION = """
CREATE FUNCTION create_audit_partitions(
    months_ahead integer DEFAULT 3,
    from_month date DEFAULT NULL
) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    first_month date := date_trunc(
        'month', coalesce(from_month::timestamp, now() AT TIME ZONE 'UTC'))::date;
    month_start date;
    month_end date;
    lower_bound text;
    upper_bound text;
    partition_name text;
BEGIN
    IF months_ahead < 0 THEN
        RAISE EXCEPTION 'months_ahead must be >= 0, got %', months_ahead;
    END IF;
    FOR i IN 0..months_ahead LOOP
        month_start := (first_month + make_interval(months => i))::date;
        month_end := (month_start + interval '1 month')::date;
        partition_name := 'audit_log_entries_' || to_char(month_start, 'YYYY_MM');
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;

        -- Serialise concurrent callers, then look again under the lock.
        LOCK TABLE audit_log_entries IN SHARE ROW EXCLUSIVE MODE;
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;

        lower_bound := to_char(month_start, 'YYYY-MM-DD') || ' 00:00:00+00';
        upper_bound := to_char(month_end, 'YYYY-MM-DD') || ' 00:00:00+00';
        EXECUTE format(
            'CREATE TABLE %I (LIKE audit_log_entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
            partition_name);
        -- Rows that fell into the default partition for this month move first,
        -- otherwise ATTACH would refuse (the default would overlap the range).
        EXECUTE format(
            'WITH moved AS (DELETE FROM audit_log_entries_default'
            ' WHERE occurred_at >= %L AND occurred_at < %L RETURNING *)'
            ' INSERT INTO %I SELECT * FROM moved',
            lower_bound, upper_bound, partition_name);
        EXECUTE format(
            'ALTER TABLE audit_log_entries ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            partition_name, lower_bound, upper_bound);
        RETURN NEXT partition_name;
    END LOOP;
END;
$$;
"""

CREATE_MASK_FUNCTIONS = f"""
CREATE FUNCTION audit_is_secret(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT replace(lower(name), '-', '_') ~ '{SECRET_KEY_PATTERN}'
$$;

-- `value` with every secret-named key masked, at any depth of objects and arrays.
CREATE FUNCTION audit_mask_value(column_name text, value jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value IS NULL OR value = 'null'::jsonb THEN
        RETURN value;
    ELSIF audit_is_secret(column_name) THEN
        RETURN '"***"'::jsonb;
    ELSIF jsonb_typeof(value) = 'object' THEN
        RETURN (SELECT coalesce(jsonb_object_agg(k, audit_mask_value(k, v)), '{{}}'::jsonb)
                  FROM jsonb_each(value) AS e(k, v));
    ELSIF jsonb_typeof(value) = 'array' THEN
        RETURN (SELECT coalesce(jsonb_agg(audit_mask_value(column_name, v) ORDER BY i),
                                '[]'::jsonb)
                  FROM jsonb_array_elements(value) WITH ORDINALITY AS e(v, i));
    END IF;
    RETURN value;
END;
$$;

-- A whole row; for system_config, a setting whose key names a secret hides its value.
CREATE FUNCTION audit_mask_row(row_data jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(
               key,
               CASE WHEN key = 'value' AND audit_is_secret(row_data ->> 'key')
                    THEN '"***"'::jsonb
                    ELSE audit_mask_value(key, value)
               END),
           '{{}}'::jsonb)
    FROM jsonb_each(row_data)
$$;
"""

CREATE_TRIGGER_FUNCTION = """
CREATE FUNCTION audit_row_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_row jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    new_row jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    row_data jsonb := coalesce(new_row, old_row);
    changes jsonb;
    details jsonb;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- Compare raw values, then mask: a changed password shows as changed.
        SELECT jsonb_object_agg(n.key, jsonb_build_object(
                   'old', audit_mask_value(n.key, o.value),
                   'new', audit_mask_value(n.key, n.value)))
          INTO changes
          FROM jsonb_each(new_row) AS n
          JOIN jsonb_each(old_row) AS o ON o.key = n.key
         WHERE n.value IS DISTINCT FROM o.value
           AND NOT (n.key = ANY (TG_ARGV));
        IF changes IS NULL THEN
            RETURN NULL;
        END IF;
        IF changes ? 'value'
           AND (audit_is_secret(old_row ->> 'key') OR audit_is_secret(new_row ->> 'key')) THEN
            changes := jsonb_set(changes, '{value}', '{"old": "***", "new": "***"}');
        END IF;
        details := jsonb_build_object('changes', changes);
    ELSIF TG_OP = 'INSERT' THEN
        details := jsonb_build_object('new', audit_mask_row(new_row));
    ELSE
        details := jsonb_build_object('old', audit_mask_row(old_row));
    END IF;

    INSERT INTO audit_log_entries (
        user_id, action, resource_type, resource_id, ip_address, user_agent, request_id, details
    ) VALUES (
        nullif(current_setting('ollamamax.user_id', true), '')::uuid,
        TG_TABLE_NAME || '.' || lower(TG_OP),
        TG_TABLE_NAME,
        coalesce(row_data ->> 'id', row_data ->> 'key'),
        nullif(current_setting('ollamamax.ip_address', true), '')::inet,
        nullif(current_setting('ollamamax.user_agent', true), ''),
        nullif(current_setting('ollamamax.request_id', true), ''),
        details || jsonb_build_object('source', 'trigger')
    );
    RETURN NULL;
END;
$$;
"""

# Table -> columns whose changes alone are not worth an audit row.
AUDITED_TABLES = {
    "users": ("updated_at", "last_login_at", "failed_login_count", "first_failed_login_at"),
    "models": ("updated_at", "search_vector"),
    "nodes": (
        "updated_at",
        "last_heartbeat_at",
        "gpu_memory_free_bytes",
        "gpu_utilization_pct",
        "slots_busy",
    ),
    "system_config": ("updated_at",),
}


def upgrade() -> None:
    op.execute("CREATE TABLE audit_log_entries_default PARTITION OF audit_log_entries DEFAULT")
    op.execute(CREATE_PARTITION_FUNCTION)
    op.execute("SELECT create_audit_partitions(3)")
    op.execute(CREATE_MASK_FUNCTIONS)
    op.execute(CREATE_TRIGGER_FUNCTION)
    for table, ignored in AUDITED_TABLES.items():
        arguments = ", ".join(f"'{column}'" for column in ignored)
        op.execute(
            f"CREATE TRIGGER audit_{table} AFTER INSERT OR UPDATE OR DELETE ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION audit_row_change({arguments})"
        )


def downgrade() -> None:
    for table in AUDITED_TABLES:
        op.execute(f"DROP TRIGGER audit_{table} ON {table}")
    op.execute("DROP FUNCTION audit_row_change()")
    op.execute("DROP FUNCTION audit_mask_row(jsonb)")
    op.execute("DROP FUNCTION audit_mask_value(text, jsonb)")
    op.execute("DROP FUNCTION audit_is_secret(text)")
    op.execute("DROP FUNCTION create_audit_partitions(integer, date)")
    # Every partition, monthly and default, goes with this revision.
    op.execute(
        """
        DO $$
        DECLARE child regclass;
        BEGIN
            FOR child IN
                SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'audit_log_entries'::regclass
            LOOP
                EXECUTE format('DROP TABLE %s', child);
            END LOOP;
        END;
        $$
        """
    )
