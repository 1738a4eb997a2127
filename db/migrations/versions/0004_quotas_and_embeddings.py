"""Quotas (per-account and per-key limits, the daily token ledgers, live-job counts by
owner), per-model bounds, and embedding jobs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

- users.quotas, api_keys.limits: an account's own quotas and a key's narrower limits, by
  name (web/inference/quotas.py); empty means the run-time defaults.
- inference_requests.api_key_id: the key a job came with, so a key's quotas count it;
  running_cap / key_running_cap: the concurrency limits fixed when the job was accepted,
  read by the worker's claim.
- user_token_usage, api_key_token_usage: tokens spent per UTC day, written by the statement
  that stores a job's result, read by the daily token quota.
- models.limits: per-model bounds on num_predict and num_ctx (the engine-option policy's
  fleet-wide bounds, lowered per model), applied by the statement that stores a job.
- inference_requests.kind may be 'embed' (embedding jobs, queued like the others).
- Partial indexes on the live jobs of a user and of a key: the quotas count them at every
  submission and capped claim.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("status IN ('queued', 'running')")


def _ledger(name: str, owner: str, target: str) -> None:
    op.create_table(
        name,
        sa.Column(owner, sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            [owner], [f"{target}.id"], name=f"fk_{name}_{owner}_{target}", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(owner, "day", name=f"pk_{name}"),
    )


KIND = "ck_inference_requests_kind"


def upgrade() -> None:
    empty = sa.text("'{}'")
    op.drop_constraint(op.f(KIND), "inference_requests", type_="check")
    op.create_check_constraint(
        op.f(KIND), "inference_requests", "kind IN ('chat', 'generate', 'embed')"
    )
    op.add_column(
        "users", sa.Column("quotas", postgresql.JSONB(), server_default=empty, nullable=False)
    )
    op.add_column(
        "api_keys", sa.Column("limits", postgresql.JSONB(), server_default=empty, nullable=False)
    )
    op.add_column(
        "models", sa.Column("limits", postgresql.JSONB(), server_default=empty, nullable=False)
    )
    op.add_column("inference_requests", sa.Column("api_key_id", sa.Uuid(), nullable=True))
    op.add_column("inference_requests", sa.Column("running_cap", sa.Integer(), nullable=True))
    op.add_column("inference_requests", sa.Column("key_running_cap", sa.Integer(), nullable=True))
    op.create_foreign_key(
        "fk_inference_requests_api_key_id_api_keys",
        "inference_requests",
        "api_keys",
        ["api_key_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(
        "ix_inference_requests_user_id_live",
        "inference_requests",
        ["user_id", "status"],
        postgresql_where=LIVE,
    )
    op.create_index(
        "ix_inference_requests_api_key_id_live",
        "inference_requests",
        ["api_key_id", "status"],
        postgresql_where=LIVE,
    )
    _ledger("user_token_usage", "user_id", "users")
    _ledger("api_key_token_usage", "api_key_id", "api_keys")


def downgrade() -> None:
    op.drop_table("api_key_token_usage")
    op.drop_table("user_token_usage")
    op.drop_index("ix_inference_requests_api_key_id_live", table_name="inference_requests")
    op.drop_index("ix_inference_requests_user_id_live", table_name="inference_requests")
    op.drop_constraint(
        "fk_inference_requests_api_key_id_api_keys", "inference_requests", type_="foreignkey"
    )
    op.drop_column("inference_requests", "key_running_cap")
    op.drop_column("inference_requests", "running_cap")
    op.drop_column("inference_requests", "api_key_id")
    op.drop_column("models", "limits")
    op.drop_column("api_keys", "limits")
    op.drop_column("users", "quotas")
    op.execute("DELETE FROM inference_requests WHERE kind = 'embed'")
    op.drop_constraint(op.f(KIND), "inference_requests", type_="check")
    op.create_check_constraint(op.f(KIND), "inference_requests", "kind IN ('chat', 'generate')")
