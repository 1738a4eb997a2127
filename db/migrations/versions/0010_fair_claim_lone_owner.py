"""The fair claim counts starts only when owners compete.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

- fair_claim(...) as 0008 wrote it, but each waiting owner's starts in the window are
  counted only when more than one owner waits: an owner alone is first whatever its score,
  and its count read up to 1,000 (MAX_COUNTED_STARTS) index entries at every claim, about
  half a millisecond of PostgreSQL's CPU per job when one caller keeps a model busy
  (bench.cost, docs/benchmarks.md). With two owners or more the pick is 0008's.
"""

from collections.abc import Sequence

from alembic import op

from db.migrations.earlier import replacing, revision_module

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_0008 = revision_module("0008_fair_claim_function.py")

STARTS_WHEN_OWNERS_COMPETE = f"""\
    ), starts AS (
        -- Each waiting owner's starts in the window, counted up to {_0008.MAX_COUNTED_STARTS}
        -- by the index on (model, owner, started_at), when more than one owner waits (alone,
        -- an owner is first whatever its count). The owner is written with the index's
        -- literal expression.
        SELECT h.owner, CASE WHEN (SELECT count(*) FROM heads) = 1 THEN 0
            ELSE coalesce(r.n, 0) + (
                SELECT count(*) FROM (
                    SELECT 1 FROM inference_requests s
                    WHERE s.model_name = v_model
                      AND coalesce(s.user_id, '{_0008.NO_OWNER}'::uuid) = h.owner
                      AND s.started_at >= now() - p_window
                    LIMIT {_0008.MAX_COUNTED_STARTS}
                ) recent
            ) END AS n
        FROM heads h
        LEFT JOIN long_running r ON r.owner = h.owner
"""


def upgrade() -> None:
    assert _0008.STARTS_IN_WINDOW in _0008.CREATE_FUNCTION
    changed = _0008.CREATE_FUNCTION.replace(_0008.STARTS_IN_WINDOW, STARTS_WHEN_OWNERS_COMPETE)
    op.execute(replacing(changed))


def downgrade() -> None:
    op.execute(replacing(_0008.CREATE_FUNCTION))
