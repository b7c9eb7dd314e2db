"""Views for ad-hoc inspection: ``async_jobs_summary``, ``async_jobs_stuck`` and
``async_jobs_recent_failures``.

Read-only shortcuts for psql; nothing in the gateway reads them. ``async_jobs_stuck`` counts a
pending job as stuck after ``asyncgate.stuck_pending`` (an interval a session may ``SET``; 10
minutes when unset).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

VIEWS: dict[str, tuple[str, str, dict[str, str]]] = {
    "async_jobs_summary": (
        """
        SELECT status, kind, count(*) AS jobs, min(created_at) AS oldest_created_at,
               max(created_at) AS newest_created_at
        FROM async_jobs GROUP BY status, kind
        """,
        "Jobs counted by status and kind, with the oldest and newest submit of each (expired "
        "jobs the sweeper has not deleted yet included).",
        {
            "status": "Job status (pending, processing, completed, failed, cancelled).",
            "kind": "Kind of inference request.",
            "jobs": "Rows with this status and kind.",
            "oldest_created_at": "Submit time of the oldest of them.",
            "newest_created_at": "Submit time of the newest of them.",
        },
    ),
    "async_jobs_stuck": (
        """
        SELECT id, kind, status,
               CASE WHEN status = 'processing' THEN 'lease_expired' ELSE 'pending_too_long' END
                   AS reason,
               lease_owner, lease_expires_at, attempts, created_at, now() - created_at AS age
        FROM async_jobs
        WHERE (status = 'processing' AND lease_expires_at < now())
           OR (status = 'pending' AND created_at < now() - coalesce(
                   nullif(current_setting('asyncgate.stuck_pending', true), '')::interval,
                   interval '10 minutes'))
        """,
        "Jobs that look stuck: processing with a lapsed lease (their worker died or is cut "
        "off; a worker requeues them shortly), or pending for longer than "
        "asyncgate.stuck_pending (SET per session; 10 minutes when unset).",
        {
            "id": "Job id.",
            "kind": "Kind of inference request.",
            "status": "processing or pending.",
            "reason": "lease_expired (processing, lease lapsed) or pending_too_long.",
            "lease_owner": "Worker that held (or last held) the job.",
            "lease_expires_at": "When the lease lapsed; NULL for a pending job.",
            "attempts": "Executions started so far.",
            "created_at": "When the job was submitted (or requeued by an operator).",
            "age": "Time since created_at.",
        },
    ),
    "async_jobs_recent_failures": (
        """
        SELECT id, kind, provider, model, status_code, error->'error'->>'type' AS error_type,
               error->'error'->>'message' AS error_message, attempts, created_at, completed_at
        FROM async_jobs
        WHERE status = 'failed' AND completed_at > now() - interval '24 hours'
        ORDER BY completed_at DESC
        """,
        "Jobs that failed within the last 24 hours, most recent first, with the reason.",
        {
            "id": "Job id.",
            "kind": "Kind of inference request.",
            "provider": "Provider named by the requested model.",
            "model": "Requested model as provider/model.",
            "status_code": "Final upstream HTTP status, or 502/504 for gateway-side failures.",
            "error_type": "error.error.type of the stored BifrostError.",
            "error_message": "error.error.message of the stored BifrostError.",
            "attempts": "Executions started.",
            "created_at": "When the job was submitted.",
            "completed_at": "When it failed.",
        },
    ),
}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    for name, (query, comment, columns) in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")
        op.execute(f"COMMENT ON VIEW {name} IS {_quote(comment)}")
        for column, text in columns.items():
            op.execute(f"COMMENT ON COLUMN {name}.{column} IS {_quote(text)}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
