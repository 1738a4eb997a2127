"""Tables, constraints and indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written from the models once and then frozen: migrations never import live models.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # array_to_string() is only STABLE; a generated column needs an IMMUTABLE expression.
    op.execute(
        "CREATE FUNCTION immutable_array_to_string(text[], text) RETURNS text"
        " LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT array_to_string($1, $2)'"
    )
    op.create_table(
        "audit_log_entries",  # partitions: see 0002
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=True),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("ip_address", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", "occurred_at", name=op.f("pk_audit_log_entries")),
        postgresql_partition_by="RANGE (occurred_at)",
    )
    op.create_index(
        "ix_audit_log_entries_action_occurred_at",
        "audit_log_entries",
        ["action", "occurred_at"],
        unique=False,
    )
    op.create_index(
        "ix_audit_log_entries_details",
        "audit_log_entries",
        ["details"],
        unique=False,
        postgresql_using="gin",
    )
    op.create_index(
        "ix_audit_log_entries_occurred_at", "audit_log_entries", ["occurred_at"], unique=False
    )
    op.create_index(
        "ix_audit_log_entries_resource",
        "audit_log_entries",
        ["resource_type", "resource_id", "occurred_at"],
        unique=False,
    )
    op.create_index(
        "ix_audit_log_entries_user_id_occurred_at",
        "audit_log_entries",
        ["user_id", "occurred_at"],
        unique=False,
    )
    op.create_table(
        "model_usage_stats",
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("completed", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("errors", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cancelled", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "completion_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "total_duration_ns", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("queue_wait_ms", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("model_name", "day", name=op.f("pk_model_usage_stats")),
    )
    op.create_index("ix_model_usage_stats_day", "model_usage_stats", ["day"], unique=False)
    op.create_table(
        "models",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("family", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("digest", sa.String(length=71), nullable=True),
        sa.Column(
            "tags",
            postgresql.ARRAY(sa.String(length=64)),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "parameters",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), server_default="unavailable", nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("discovered", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed(
                "setweight(to_tsvector('simple', coalesce(name, '')), 'A') || setweight(to_tsvector('english', coalesce(description, '')), 'B') || setweight(to_tsvector('simple', immutable_array_to_string(tags, ' ')), 'C')",
                persisted=True,
            ),
            nullable=False,
        ),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "digest IS NULL OR digest ~ '^sha256:[0-9a-f]{64}$'", name=op.f("ck_models_digest")
        ),
        sa.CheckConstraint(
            "status IN ('available', 'unavailable', 'disabled')", name=op.f("ck_models_status")
        ),
        sa.CheckConstraint(
            "size_bytes IS NULL OR size_bytes >= 0", name=op.f("ck_models_size_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_index(
        "ix_models_parameters", "models", ["parameters"], unique=False, postgresql_using="gin"
    )
    op.create_index(
        "ix_models_search_vector", "models", ["search_vector"], unique=False, postgresql_using="gin"
    )
    op.create_index("ix_models_status", "models", ["status"], unique=False)
    op.create_index("ix_models_tags", "models", ["tags"], unique=False, postgresql_using="gin")
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=True),
        sa.Column("gpu_name", sa.String(length=255), nullable=True),
        sa.Column("gpu_memory_total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("gpu_memory_free_bytes", sa.BigInteger(), nullable=True),
        sa.Column("gpu_utilization_pct", sa.Float(), nullable=True),
        sa.Column("engine_kind", sa.String(length=16), server_default="ollama", nullable=False),
        sa.Column("engine_url", sa.String(length=512), nullable=False),
        sa.Column("engine_version", sa.String(length=64), nullable=True),
        sa.Column("worker_name", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="offline", nullable=False),
        sa.Column("status_reason", sa.String(length=255), nullable=True),
        sa.Column(
            "labels",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("slots", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("slots_busy", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("drained", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "engine_kind IN ('ollama', 'openai')", name=op.f("ck_nodes_engine_kind")
        ),
        sa.CheckConstraint(
            "status IN ('online', 'degraded', 'offline')", name=op.f("ck_nodes_status")
        ),
        sa.CheckConstraint(
            "slots >= 0 AND slots_busy >= 0", name=op.f("ck_nodes_slots_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("hostname", "gpu_index", name=op.f("uq_nodes_hostname_gpu_index")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    op.create_index("ix_nodes_labels", "nodes", ["labels"], unique=False, postgresql_using="gin")
    op.create_index(
        "ix_nodes_last_heartbeat_at_alive",
        "nodes",
        ["last_heartbeat_at"],
        unique=False,
        postgresql_where=sa.text("status <> 'offline'"),
    )
    op.create_index("ix_nodes_status", "nodes", ["status"], unique=False)
    op.create_table(
        "system_config",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("updated_by", sa.UUID(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_system_config")),
    )
    op.create_table(
        "users",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), server_default="user", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("failed_login_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("first_failed_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("role IN ('admin', 'operator', 'user')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index(
        "ix_users_role_active",
        "users",
        ["role"],
        unique=False,
        postgresql_where=sa.text("is_active"),
    )
    op.create_index(
        "uq_users_email_lower", "users", [sa.literal_column("lower(email)")], unique=True
    )
    op.create_index(
        "uq_users_username_lower", "users", [sa.literal_column("lower(username)")], unique=True
    )
    op.create_table(
        "api_keys",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column(
            "scopes",
            postgresql.ARRAY(sa.String(length=32)),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_index(
        "ix_api_keys_scopes", "api_keys", ["scopes"], unique=False, postgresql_using="gin"
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"], unique=False)
    op.create_table(
        "inference_requests",
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("model_id", sa.UUID(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), server_default="api", nullable=False),
        sa.Column("input", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "options",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("priority", sa.SmallInteger(), server_default=sa.text("5"), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("node_id", sa.UUID(), nullable=True),
        sa.Column("worker_name", sa.String(length=255), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("output_message", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("done_reason", sa.String(length=32), nullable=True),
        sa.Column("prompt_eval_count", sa.Integer(), nullable=True),
        sa.Column("eval_count", sa.Integer(), nullable=True),
        sa.Column("total_duration", sa.BigInteger(), nullable=True),
        sa.Column("load_duration", sa.BigInteger(), nullable=True),
        sa.Column("prompt_eval_duration", sa.BigInteger(), nullable=True),
        sa.Column("eval_duration", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column(
            "queued_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_token_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("kind IN ('chat', 'generate')", name=op.f("ck_inference_requests_kind")),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')",
            name=op.f("ck_inference_requests_status"),
        ),
        sa.CheckConstraint("attempt >= 1", name=op.f("ck_inference_requests_attempt_positive")),
        sa.CheckConstraint(
            "priority BETWEEN 0 AND 9", name=op.f("ck_inference_requests_priority_range")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_inference_requests_model_id_models"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_inference_requests_node_id_nodes"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_inference_requests_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_requests")),
    )
    op.create_index(
        "ix_inference_requests_completed_at",
        "inference_requests",
        ["completed_at"],
        unique=False,
        postgresql_where=sa.text("completed_at IS NOT NULL"),
    )
    op.create_index(
        "ix_inference_requests_created_at", "inference_requests", ["created_at"], unique=False
    )
    op.create_index(
        "ix_inference_requests_lease_until_running",
        "inference_requests",
        ["lease_until"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "ix_inference_requests_model_name_created_at",
        "inference_requests",
        ["model_name", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_inference_requests_node_id_running",
        "inference_requests",
        ["node_id"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "ix_inference_requests_status_live",
        "inference_requests",
        ["status", "priority", "queued_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "ix_inference_requests_undispatched",
        "inference_requests",
        ["queued_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued' AND dispatched_at IS NULL"),
    )
    op.create_index(
        "ix_inference_requests_user_id_created_at",
        "inference_requests",
        ["user_id", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index(
        "uq_inference_requests_user_id_idempotency_key",
        "inference_requests",
        ["user_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "model_replicas",
        sa.Column("model_id", sa.UUID(), nullable=False),
        sa.Column("node_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="available", nullable=False),
        sa.Column("loaded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("size_vram_bytes", sa.BigInteger(), nullable=True),
        sa.Column("pull_completed_bytes", sa.BigInteger(), nullable=True),
        sa.Column("pull_total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('available', 'pulling', 'failed', 'removing')",
            name=op.f("ck_model_replicas_status"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_replicas_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_model_replicas_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_replicas")),
        sa.UniqueConstraint("model_id", "node_id", name=op.f("uq_model_replicas_model_id_node_id")),
    )
    op.create_index(
        "ix_model_replicas_model_id_available",
        "model_replicas",
        ["model_id"],
        unique=False,
        postgresql_where=sa.text("status = 'available'"),
    )
    op.create_index("ix_model_replicas_node_id", "model_replicas", ["node_id"], unique=False)
    op.create_table(
        "user_sessions",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("refresh_jti", sa.String(length=64), nullable=False),
        sa.Column("access_jti", sa.String(length=64), nullable=True),
        sa.Column("family_id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=64), nullable=True),
        sa.Column("ip_address", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("refresh_jti", name=op.f("uq_user_sessions_refresh_jti")),
    )
    op.create_index("ix_user_sessions_expires_at", "user_sessions", ["expires_at"], unique=False)
    op.create_index("ix_user_sessions_family_id", "user_sessions", ["family_id"], unique=False)
    op.create_index(
        "ix_user_sessions_user_id_active",
        "user_sessions",
        ["user_id", "created_at"],
        unique=False,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_user_sessions_user_id_active",
        table_name="user_sessions",
        postgresql_where=sa.text("revoked_at IS NULL"),
    )
    op.drop_index("ix_user_sessions_family_id", table_name="user_sessions")
    op.drop_index("ix_user_sessions_expires_at", table_name="user_sessions")
    op.drop_table("user_sessions")
    op.drop_index("ix_model_replicas_node_id", table_name="model_replicas")
    op.drop_index(
        "ix_model_replicas_model_id_available",
        table_name="model_replicas",
        postgresql_where=sa.text("status = 'available'"),
    )
    op.drop_table("model_replicas")
    op.drop_index(
        "uq_inference_requests_user_id_idempotency_key",
        table_name="inference_requests",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index("ix_inference_requests_user_id_created_at", table_name="inference_requests")
    op.drop_index(
        "ix_inference_requests_undispatched",
        table_name="inference_requests",
        postgresql_where=sa.text("status = 'queued' AND dispatched_at IS NULL"),
    )
    op.drop_index(
        "ix_inference_requests_status_live",
        table_name="inference_requests",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.drop_index(
        "ix_inference_requests_node_id_running",
        table_name="inference_requests",
        postgresql_where=sa.text("status = 'running'"),
    )
    op.drop_index("ix_inference_requests_model_name_created_at", table_name="inference_requests")
    op.drop_index(
        "ix_inference_requests_lease_until_running",
        table_name="inference_requests",
        postgresql_where=sa.text("status = 'running'"),
    )
    op.drop_index("ix_inference_requests_created_at", table_name="inference_requests")
    op.drop_index(
        "ix_inference_requests_completed_at",
        table_name="inference_requests",
        postgresql_where=sa.text("completed_at IS NOT NULL"),
    )
    op.drop_table("inference_requests")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_index("ix_api_keys_scopes", table_name="api_keys", postgresql_using="gin")
    op.drop_table("api_keys")
    op.drop_index("uq_users_username_lower", table_name="users")
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_index("ix_users_role_active", table_name="users", postgresql_where=sa.text("is_active"))
    op.drop_table("users")
    op.drop_table("system_config")
    op.drop_index("ix_nodes_status", table_name="nodes")
    op.drop_index(
        "ix_nodes_last_heartbeat_at_alive",
        table_name="nodes",
        postgresql_where=sa.text("status <> 'offline'"),
    )
    op.drop_index("ix_nodes_labels", table_name="nodes", postgresql_using="gin")
    op.drop_table("nodes")
    op.drop_index("ix_models_tags", table_name="models", postgresql_using="gin")
    op.drop_index("ix_models_status", table_name="models")
    op.drop_index("ix_models_search_vector", table_name="models", postgresql_using="gin")
    op.drop_index("ix_models_parameters", table_name="models", postgresql_using="gin")
    op.drop_table("models")
    op.drop_index("ix_model_usage_stats_day", table_name="model_usage_stats")
    op.drop_table("model_usage_stats")
    op.drop_index("ix_audit_log_entries_user_id_occurred_at", table_name="audit_log_entries")
    op.drop_index("ix_audit_log_entries_resource", table_name="audit_log_entries")
    op.drop_index("ix_audit_log_entries_occurred_at", table_name="audit_log_entries")
    op.drop_index(
        "ix_audit_log_entries_details", table_name="audit_log_entries", postgresql_using="gin"
    )
    op.drop_index("ix_audit_log_entries_action_occurred_at", table_name="audit_log_entries")
    op.drop_table("audit_log_entries")
    op.execute("DROP FUNCTION immutable_array_to_string(text[], text)")
