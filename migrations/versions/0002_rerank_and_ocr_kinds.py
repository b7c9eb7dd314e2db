"""Allow the rerank and ocr kinds.

Downgrading refuses while rerank or ocr jobs exist: delete or let them expire first, since the
older schema cannot hold them.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NINE_KINDS = (
    "'text_completion', 'chat_completion', 'response', 'embedding', 'speech', 'transcription', "
    "'image_generation', 'image_edit', 'image_variation'"
)
ELEVEN_KINDS = f"{NINE_KINDS}, 'rerank', 'ocr'"


def upgrade() -> None:
    op.drop_constraint(op.f("async_jobs_kind_check"), "async_jobs", type_="check")
    op.create_check_constraint(
        op.f("async_jobs_kind_check"), "async_jobs", f"kind IN ({ELEVEN_KINDS})"
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM async_jobs WHERE kind IN ('rerank', 'ocr')) THEN
                RAISE EXCEPTION 'rerank or ocr jobs exist; delete them before downgrading';
            END IF;
        END $$
        """
    )
    op.drop_constraint(op.f("async_jobs_kind_check"), "async_jobs", type_="check")
    op.create_check_constraint(
        op.f("async_jobs_kind_check"), "async_jobs", f"kind IN ({NINE_KINDS})"
    )
