"""Requests and results are compressed with lz4 instead of pglz, where the server has lz4.

A large request or result is compressed when it is stored (TOAST): with pglz that costs
PostgreSQL about as much as parsing the JSON itself (some 8 ms of CPU per MB), with lz4 a
small fraction of it. Only new values are affected; stored ones stay readable either way. A
server built without lz4 (or older than PostgreSQL 14) keeps pglz.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

COLUMNS = ("request", "result")


def _set_compression(method: str) -> None:
    alters = ", ".join(f"ALTER COLUMN {c} SET COMPRESSION {method}" for c in COLUMNS)
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
                       AND 'lz4' = ANY(enumvals)) THEN
                ALTER TABLE async_jobs {alters};
            END IF;
        END
        $$
        """
    )


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("default")
