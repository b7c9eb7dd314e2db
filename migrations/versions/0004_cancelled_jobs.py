"""Allow the ``cancelled`` status: a job its client cancelled, terminal like the others.

A cancelled job has ``completed_at``, ``expires_at`` and an ``error`` saying it was cancelled,
and expires after its TTL. Downgrading refuses while cancelled jobs exist: delete them or let
them expire first, since the older schema cannot hold them.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OLD_STATUS_COMMENT = (
    "pending -> processing -> completed | failed; processing may return to pending."
)
_NEW_STATUS_COMMENT = (
    "pending -> processing -> completed | failed; processing may return to pending; "
    "pending or processing -> cancelled when the client cancels."
)
_OLD_ERROR_COMMENT = "BifrostError body of a failed job."
_NEW_ERROR_COMMENT = "BifrostError body of a failed or cancelled job."

_CONSTRAINTS = {
    "status": (
        "status IN ('pending', 'processing', 'completed', 'failed')",
        "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')",
    ),
    "terminal_has_times": (
        "status NOT IN ('completed', 'failed') "
        "OR (completed_at IS NOT NULL AND expires_at IS NOT NULL AND lease_owner IS NULL)",
        "status NOT IN ('completed', 'failed', 'cancelled') "
        "OR (completed_at IS NOT NULL AND expires_at IS NOT NULL AND lease_owner IS NULL)",
    ),
    "failed_has_error": (
        "status <> 'failed' OR error IS NOT NULL",
        "status NOT IN ('failed', 'cancelled') OR error IS NOT NULL",
    ),
}


def _replace_constraints(which: int) -> None:
    for name, conditions in _CONSTRAINTS.items():
        constraint = op.f(f"async_jobs_{name}_check")
        op.drop_constraint(constraint, "async_jobs", type_="check")
        op.create_check_constraint(constraint, "async_jobs", conditions[which])


def _comments(status: str, old_status: str, error: str, old_error: str) -> None:
    op.alter_column(
        "async_jobs", "status", existing_type=sa.Text(), comment=status, existing_comment=old_status
    )
    op.alter_column(
        "async_jobs",
        "error",
        existing_type=postgresql.JSONB(),
        comment=error,
        existing_comment=old_error,
    )


def upgrade() -> None:
    _replace_constraints(1)
    _comments(_NEW_STATUS_COMMENT, _OLD_STATUS_COMMENT, _NEW_ERROR_COMMENT, _OLD_ERROR_COMMENT)


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM async_jobs WHERE status = 'cancelled') THEN
                RAISE EXCEPTION 'cancelled jobs exist; delete them before downgrading';
            END IF;
        END $$
        """
    )
    _replace_constraints(0)
    _comments(_OLD_STATUS_COMMENT, _NEW_STATUS_COMMENT, _OLD_ERROR_COMMENT, _NEW_ERROR_COMMENT)
