"""Completion webhooks: where each job reports its end, the deliveries and their attempts,
each account's signing secret, and the trigger that queues a delivery.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

- inference_requests.webhook_url: where the job's terminal status is POSTed;
  api_keys.webhook_url: the default for jobs submitted with the key.
- webhook_deliveries: one per job that ended with a webhook URL (its id is the Standard
  Webhooks message id); webhook_attempts: every POST made for one.
- webhook_secrets: each account's signing secret, apart from the users row.
- webhook_on_terminal: an AFTER UPDATE OF status trigger, filtered by its WHEN clause to
  jobs with a webhook URL entering a terminal status, that inserts the delivery and
  NOTIFYs omx_webhooks in the transaction that ended the job. Every way a job ends (a
  worker's finish, a cancel, a sweeper's failure) is an UPDATE of status, so all are
  covered; a job without a webhook costs the WHEN test and nothing else, and no path
  sends one statement more.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TERMINAL = "('completed', 'failed', 'cancelled')"

CREATE_FUNCTION = """
CREATE FUNCTION webhook_on_terminal() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, request_id, url, event)
    VALUES (gen_random_uuid(), NEW.id, NEW.webhook_url, 'inference.' || NEW.status);
    -- Delivered at commit, once per transaction whatever the number of rows.
    PERFORM pg_notify('omx_webhooks', '');
    RETURN NULL;
END
$$
"""

CREATE_TRIGGER = f"""
CREATE TRIGGER webhook_on_terminal AFTER UPDATE OF status ON inference_requests
FOR EACH ROW
WHEN (NEW.webhook_url IS NOT NULL AND NEW.status IN {TERMINAL}
      AND OLD.status NOT IN {TERMINAL})
EXECUTE FUNCTION webhook_on_terminal()
"""


def upgrade() -> None:
    op.add_column("inference_requests", sa.Column("webhook_url", sa.String(2048), nullable=True))
    op.add_column("api_keys", sa.Column("webhook_url", sa.String(2048), nullable=True))
    now = sa.text("now()")
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column(
            "window_started_at", sa.DateTime(timezone=True), server_default=now, nullable=False
        ),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=now),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'gave_up')", name=op.f("ck_webhook_deliveries_state")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["inference_requests.id"],
            name=op.f("fk_webhook_deliveries_request_id_inference_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index("ix_webhook_deliveries_request_id", "webhook_deliveries", ["request_id"])
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index(
        "ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id", "attempted_at"]
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_webhook_secrets_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_webhook_secrets")),
    )
    op.execute(CREATE_FUNCTION)
    op.execute(CREATE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER webhook_on_terminal ON inference_requests")
    op.execute("DROP FUNCTION webhook_on_terminal()")
    op.drop_table("webhook_secrets")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_column("api_keys", "webhook_url")
    op.drop_column("inference_requests", "webhook_url")
