"""Listing jobs, admin keys and idempotent submits.

``virtual_keys.is_admin`` lets a key list every job. Two indexes serve the job list (newest
first, a caller's own jobs or all of them). ``async_jobs.idempotency_key`` and
``request_hash`` let a retried submit find its first job; a unique index on the key per owner
makes concurrent duplicates create one job.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

IS_ADMIN_COMMENT = "An admin key lists every job, not only its own; it polls like any other key."
IDEMPOTENCY_KEY_COMMENT = (
    "Idempotency-Key of the submit, unique per owner while it holds; cleared when its window "
    "has passed or the job expired, so the key may be used again."
)
REQUEST_HASH_COMMENT = (
    "SHA-256 of the canonical request (kind, body, files) sent with idempotency_key; a reuse "
    "of the key with another request is refused."
)
INDEX_COMMENTS = {
    "async_jobs_owner_list_idx": "Job list of one key, newest first (scanned backwards).",
    "async_jobs_list_idx": "Job list of an admin key (every job), newest first (scanned backwards).",
    "async_jobs_idempotency_idx": (
        "One job per (owner, Idempotency-Key); anonymous jobs share owner 0. The conflict target "
        "of the group-commit insert."
    ),
}


def upgrade() -> None:
    op.add_column(
        "virtual_keys",
        sa.Column(
            "is_admin",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
            comment=IS_ADMIN_COMMENT,
        ),
    )
    op.add_column(
        "async_jobs", sa.Column("idempotency_key", sa.Text(), comment=IDEMPOTENCY_KEY_COMMENT)
    )
    op.add_column(
        "async_jobs", sa.Column("request_hash", sa.LargeBinary(), comment=REQUEST_HASH_COMMENT)
    )
    op.create_check_constraint(
        op.f("async_jobs_idempotency_key_length_check"),
        "async_jobs",
        "char_length(idempotency_key) >= 1 AND char_length(idempotency_key) <= 255",
    )
    op.create_check_constraint(
        op.f("async_jobs_request_hash_length_check"),
        "async_jobs",
        "octet_length(request_hash) = 32",
    )
    op.create_check_constraint(
        op.f("async_jobs_idempotency_has_hash_check"),
        "async_jobs",
        "(idempotency_key IS NULL) = (request_hash IS NULL)",
    )
    op.create_index("async_jobs_owner_list_idx", "async_jobs", ["owner_key_id", "created_at", "id"])
    op.create_index("async_jobs_list_idx", "async_jobs", ["created_at", "id"])
    op.create_index(
        "async_jobs_idempotency_idx",
        "async_jobs",
        [sa.text("coalesce(owner_key_id, 0)"), "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    for name, comment in INDEX_COMMENTS.items():
        op.execute(f"COMMENT ON INDEX {name} IS '{comment}'")


def downgrade() -> None:
    for name in INDEX_COMMENTS:
        op.drop_index(name, table_name="async_jobs")
    for name in ("idempotency_has_hash", "request_hash_length", "idempotency_key_length"):
        op.drop_constraint(op.f(f"async_jobs_{name}_check"), "async_jobs", type_="check")
    op.drop_column("async_jobs", "request_hash")
    op.drop_column("async_jobs", "idempotency_key")
    op.drop_column("virtual_keys", "is_admin")
