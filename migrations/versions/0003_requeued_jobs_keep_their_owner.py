"""A requeued job keeps its last owner's name, never a lease.

A lapsed lease sends the job back to ``pending`` with ``lease_owner`` still naming the worker
that held it, so that worker, if it is alive after all, can still write the result it holds
until another worker claims the job. A pending job never has a lease.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OLD_COMMENT = "Worker holding the job while it is processing."
_NEW_COMMENT = (
    "Worker holding the job while it is processing; on a pending job, the worker whose lease "
    "lapsed, which may still renew it or write its result until another worker claims it."
)


def upgrade() -> None:
    op.execute("UPDATE async_jobs SET lease_expires_at = NULL WHERE status = 'pending'")
    op.create_check_constraint(
        op.f("async_jobs_pending_has_no_lease_check"),
        "async_jobs",
        "status <> 'pending' OR lease_expires_at IS NULL",
    )
    op.alter_column(
        "async_jobs",
        "lease_owner",
        existing_type=sa.Text(),
        comment=_NEW_COMMENT,
        existing_comment=_OLD_COMMENT,
    )


def downgrade() -> None:
    # Before 0002 a pending job named no owner.
    op.execute("UPDATE async_jobs SET lease_owner = NULL WHERE status = 'pending'")
    op.alter_column(
        "async_jobs",
        "lease_owner",
        existing_type=sa.Text(),
        comment=_OLD_COMMENT,
        existing_comment=_NEW_COMMENT,
    )
    op.drop_constraint(op.f("async_jobs_pending_has_no_lease_check"), "async_jobs", type_="check")
