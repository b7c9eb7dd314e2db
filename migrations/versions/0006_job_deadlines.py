"""Deadlines set by clients: ``async_jobs.deadline_at``.

A submit with ``x-bf-async-timeout: SECONDS`` stores when its job must have ended; past it an
unfinished job fails with 504. The partial index lets the reaper find such jobs without
scanning the table.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DEADLINE_COMMENT = (
    "When the job must have ended (submit time + x-bf-async-timeout); past it an unfinished "
    "job fails with 504. NULL: no deadline of its own."
)


def upgrade() -> None:
    op.add_column(
        "async_jobs",
        sa.Column(
            "deadline_at", sa.DateTime(timezone=True), nullable=True, comment=DEADLINE_COMMENT
        ),
    )
    op.create_index(
        op.f("async_jobs_deadline_idx"),
        "async_jobs",
        ["deadline_at"],
        postgresql_where=sa.text("deadline_at IS NOT NULL"),
    )
    op.execute(
        "COMMENT ON INDEX async_jobs_deadline_idx IS "
        "'Jobs with a client-set deadline, for the reaper that fails those past it.'"
    )


def downgrade() -> None:
    op.drop_index(op.f("async_jobs_deadline_idx"), table_name="async_jobs")
    op.drop_column("async_jobs", "deadline_at")
