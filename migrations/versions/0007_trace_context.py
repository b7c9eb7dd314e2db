"""W3C trace context of submits: ``async_jobs.traceparent`` and ``tracestate``.

A submit's valid ``traceparent`` (and the ``tracestate`` beside it) is kept with its job, so
that the worker sends each upstream attempt as part of the client's trace.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TRACEPARENT_COMMENT = (
    "W3C traceparent sent with the submit (valid ones only); each upstream attempt is sent as "
    "its child. NULL: the client sent none."
)
TRACESTATE_COMMENT = "W3C tracestate sent beside traceparent, forwarded as it came (<= 512 bytes)."


def upgrade() -> None:
    op.add_column(
        "async_jobs", sa.Column("traceparent", sa.Text, nullable=True, comment=TRACEPARENT_COMMENT)
    )
    op.add_column(
        "async_jobs", sa.Column("tracestate", sa.Text, nullable=True, comment=TRACESTATE_COMMENT)
    )
    op.create_check_constraint(
        op.f("async_jobs_traceparent_form_check"),
        "async_jobs",
        "traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'",
    )
    op.create_check_constraint(
        op.f("async_jobs_tracestate_form_check"),
        "async_jobs",
        "tracestate IS NULL OR (traceparent IS NOT NULL AND octet_length(tracestate) <= 512)",
    )


def downgrade() -> None:
    op.drop_column("async_jobs", "tracestate")
    op.drop_column("async_jobs", "traceparent")
