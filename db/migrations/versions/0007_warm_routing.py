"""Warm-model-first routing: what each replica holds in GPU memory, whether it fits its
node, and the routing decisions each node made last.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

- model_replicas.expires_at: when the engine unloads the model (Ollama's /api/ps), null
  while it is not loaded; size_vram_bytes (already there) is now written at each heartbeat
  and kept after an unload, as the size the model needs to load again.
- model_replicas.fits: false when the node's GPU memory cannot hold the model; such a
  replica serves nothing (its worker does not consume the model's queue, and the
  submission's "an online node serves it" rule skips it). Null: not known.
- nodes.routing: the node's last routing decisions (warm, handed to <node>, cold after the
  wait, cold with none warm), written by its worker with each heartbeat (docs/fleet.md).

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "model_replicas", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("model_replicas", sa.Column("fits", sa.Boolean(), nullable=True))
    op.add_column(
        "nodes",
        sa.Column(
            "routing",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("nodes", "routing")
    op.drop_column("model_replicas", "fits")
    op.drop_column("model_replicas", "expires_at")
