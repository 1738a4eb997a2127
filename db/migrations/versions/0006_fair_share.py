"""Fair share: each account's weight, and the indexes the fair claim reads.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

- users.fair_share_weight: the account's share of a contended model against other
  accounts' (NULL: FAIR_SHARE_DEFAULT_WEIGHT); positive.
- ix_inference_requests_model_queued: a model's waiting jobs by owner, priority and age
  (the claim's candidates and each owner's head).
- ix_inference_requests_model_started: a model's starts by time and owner (each owner's
  starts in the fair-share window).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("fair_share_weight", sa.Float(), nullable=True))
    op.create_check_constraint(
        op.f("ck_users_fair_share_weight"),
        "users",
        "fair_share_weight IS NULL OR fair_share_weight > 0",
    )
    op.create_index(
        "ix_inference_requests_model_queued",
        "inference_requests",
        ["model_name", "user_id", "priority", "queued_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_inference_requests_model_started",
        "inference_requests",
        ["model_name", "started_at", "user_id"],
        postgresql_where=sa.text("started_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_inference_requests_model_started", table_name="inference_requests")
    op.drop_index("ix_inference_requests_model_queued", table_name="inference_requests")
    op.drop_constraint(op.f("ck_users_fair_share_weight"), "users", type_="check")
    op.drop_column("users", "fair_share_weight")
