"""Create async_jobs, async_job_files and virtual_keys.

The whole first schema: jobs with their leases and results, uploaded files deleted with
their job, and hashed virtual keys. Every table and column carries a comment for DBAs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "virtual_keys",
        sa.Column(
            "id",
            sa.BigInteger(),
            sa.Identity(always=False),
            nullable=False,
            comment="Surrogate key.",
        ),
        sa.Column("name", sa.Text(), nullable=False, comment="Human name given at creation."),
        sa.Column(
            "key_hash",
            sa.LargeBinary(),
            nullable=False,
            comment="SHA-256 of the full key; the key itself is never stored.",
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the key was created.",
        ),
        sa.Column(
            "disabled_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the key was disabled; a disabled key is treated as unknown.",
        ),
        sa.CheckConstraint(
            "octet_length(key_hash) = 32", name=op.f("virtual_keys_key_hash_length_check")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("virtual_keys_pkey")),
        sa.UniqueConstraint("key_hash", name=op.f("virtual_keys_key_hash_key")),
        sa.UniqueConstraint("name", name=op.f("virtual_keys_name_key")),
        comment="Virtual keys (sk-bf-...) that own jobs; only their hashes are kept.",
    )
    op.create_table(
        "async_jobs",
        sa.Column("id", sa.UUID(), nullable=False, comment="Job id returned to the client."),
        sa.Column(
            "kind", sa.Text(), nullable=False, comment="Kind of inference request (request_type)."
        ),
        sa.Column(
            "status",
            sa.Text(),
            server_default=sa.text("'pending'"),
            nullable=False,
            comment="pending -> processing -> completed | failed; processing may return to pending.",
        ),
        sa.Column(
            "owner_key_id",
            sa.BigInteger(),
            nullable=True,
            comment="Virtual key that submitted the job; NULL for a public job.",
        ),
        sa.Column(
            "provider", sa.Text(), nullable=False, comment="Provider named by the requested model."
        ),
        sa.Column("model", sa.Text(), nullable=False, comment="Requested model as provider/model."),
        sa.Column(
            "request",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            comment="The request body as accepted (uploaded files are in async_job_files).",
        ),
        sa.Column(
            "ttl_seconds",
            sa.Integer(),
            nullable=False,
            comment="Seconds the result is kept after completion.",
        ),
        sa.Column(
            "result",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=True,
            comment="Upstream JSON answer of a completed job.",
        ),
        sa.Column(
            "result_bytes",
            sa.LargeBinary(),
            nullable=True,
            comment="Upstream binary answer (speech audio).",
        ),
        sa.Column(
            "result_content_type", sa.Text(), nullable=True, comment="Content type of result_bytes."
        ),
        sa.Column(
            "status_code",
            sa.SmallInteger(),
            nullable=True,
            comment="HTTP status of the final upstream answer, or 502/504 for gateway-side failures.",
        ),
        sa.Column(
            "error",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=True,
            comment="BifrostError body of a failed job.",
        ),
        sa.Column(
            "attempts",
            sa.Integer(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Executions started (claims); a handed-back job does not count.",
        ),
        sa.Column(
            "lease_owner",
            sa.Text(),
            nullable=True,
            comment="Worker holding the job while it is processing.",
        ),
        sa.Column(
            "lease_expires_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the lease lapses unless renewed; then the job is claimed again.",
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the job was accepted (its 202 was sent after this commit).",
        ),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="First claim by a worker.",
        ),
        sa.Column(
            "completed_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the job became terminal.",
        ),
        sa.Column(
            "expires_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="completed_at + ttl_seconds; after it polls answer 404 and the sweeper deletes.",
        ),
        sa.CheckConstraint(
            "kind IN ('text_completion', 'chat_completion', 'response', 'embedding', 'speech', 'transcription', 'image_generation', 'image_edit', 'image_variation')",
            name=op.f("async_jobs_kind_check"),
        ),
        sa.CheckConstraint(
            "status <> 'completed' OR result IS NOT NULL OR result_bytes IS NOT NULL",
            name=op.f("async_jobs_completed_has_result_check"),
        ),
        sa.CheckConstraint(
            "status <> 'failed' OR error IS NOT NULL",
            name=op.f("async_jobs_failed_has_error_check"),
        ),
        sa.CheckConstraint(
            "status <> 'processing' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name=op.f("async_jobs_processing_has_lease_check"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed')",
            name=op.f("async_jobs_status_check"),
        ),
        sa.CheckConstraint(
            "status NOT IN ('completed', 'failed') OR (completed_at IS NOT NULL AND expires_at IS NOT NULL AND lease_owner IS NULL)",
            name=op.f("async_jobs_terminal_has_times_check"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("async_jobs_attempts_nonnegative_check")),
        sa.CheckConstraint("ttl_seconds > 0", name=op.f("async_jobs_ttl_positive_check")),
        sa.ForeignKeyConstraint(
            ["owner_key_id"], ["virtual_keys.id"], name=op.f("async_jobs_owner_key_id_fkey")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("async_jobs_pkey")),
        comment="One row per async inference job, from submit until the sweeper deletes it.",
    )
    op.create_index(
        "async_jobs_expires_idx",
        "async_jobs",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_index(
        "async_jobs_lease_idx",
        "async_jobs",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'processing'"),
    )
    op.create_index(
        "async_jobs_pending_idx",
        "async_jobs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "async_job_files",
        sa.Column(
            "job_id",
            sa.UUID(),
            nullable=False,
            comment="Job the file was uploaded with; deleted with it.",
        ),
        sa.Column(
            "position",
            sa.SmallInteger(),
            nullable=False,
            comment="Order of the file in the upload.",
        ),
        sa.Column(
            "field",
            sa.Text(),
            nullable=False,
            comment="Multipart field name (file, image, mask...).",
        ),
        sa.Column("filename", sa.Text(), nullable=True, comment="File name sent by the client."),
        sa.Column(
            "content_type", sa.Text(), nullable=True, comment="Content type sent by the client."
        ),
        sa.Column("data", sa.LargeBinary(), nullable=False, comment="File contents."),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["async_jobs.id"],
            name=op.f("async_job_files_job_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "position", name=op.f("async_job_files_pkey")),
        comment="Files uploaded with multipart jobs (transcriptions, image edits and variations).",
    )


def downgrade() -> None:
    op.drop_table("async_job_files")
    op.drop_index(
        "async_jobs_pending_idx",
        table_name="async_jobs",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index(
        "async_jobs_lease_idx",
        table_name="async_jobs",
        postgresql_where=sa.text("status = 'processing'"),
    )
    op.drop_index(
        "async_jobs_expires_idx",
        table_name="async_jobs",
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.drop_table("async_jobs")
    op.drop_table("virtual_keys")
