"""Per-table autovacuum settings for ``async_jobs``: vacuumed after 1% of it changed, not 20%.

Every job leaves two dead row versions (its claim and its terminal write are updates of the
whole row) and their entries in the queue index ``async_jobs_pending_idx``, where claims walk
them until VACUUM removes them. With the default scale factor a table of ten million finished
jobs waits for two million dead versions; at 1% plus 1,000 it waits for about 100,000, so the
dead entries the full claims walk stay few, and the heap's free space is reused sooner.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
}


def upgrade() -> None:
    options = ", ".join(f"{name} = {value}" for name, value in SETTINGS.items())
    op.execute(f"ALTER TABLE async_jobs SET ({options})")


def downgrade() -> None:
    op.execute(f"ALTER TABLE async_jobs RESET ({', '.join(SETTINGS)})")
