"""The admission counts waiting jobs only up to the limit.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

- admit(...) as 0009 wrote it, but each waiting-jobs count stops at its limit: the
  question is only whether the limit is reached. 0009 counted every waiting job of the
  owner (and of the key) at each admission, so a submission cost PostgreSQL in proportion
  to its owner's queue: 1,660 index entries read per job on average in a 10 s flood of
  3,263 jobs at a limit of 1,000,000 (pg_stat_database, bench.pipeline). Now at most the
  limit (100 by default) is read. The lock, and so the exactness of the limit, are 0009's.
"""

from collections.abc import Sequence

from alembic import op

from db.migrations.earlier import replacing, revision_module

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_0009 = revision_module("0009_admit_function.py")

# What 0009 counts, by owner column and limit parameter: counted whole there, up to the
# limit here (the partial index on (owner, status) serves both).
COUNTS = (
    ("user_id", "p_user_id", "p_max_queued_jobs"),
    ("api_key_id", "p_api_key_id", "p_key_max_queued_jobs"),
)


def _whole(column: str, owner: str) -> str:
    return f"""        SELECT count(*) FROM inference_requests q
        WHERE q.{column} = {owner} AND q.status = 'queued'
    ) >= """


def _bounded(column: str, owner: str, limit: str) -> str:
    return f"""        SELECT count(*) FROM (
            SELECT 1 FROM inference_requests q
            WHERE q.{column} = {owner} AND q.status = 'queued'
            LIMIT {limit}
        ) waiting
    ) >= """


def upgrade() -> None:
    text = _0009.CREATE_ADMIT
    for column, owner, limit in COUNTS:
        whole = _whole(column, owner)
        assert text.count(whole) == 1, whole
        text = text.replace(whole, _bounded(column, owner, limit))
    op.execute(replacing(text))


def downgrade() -> None:
    op.execute(replacing(_0009.CREATE_ADMIT))
