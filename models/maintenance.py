"""An operator's changes to jobs (``asyncgate jobs requeue``, ``cancel`` and ``purge``).

Each is one guarded statement, like the workers' own: a requeue moves only ``failed`` or
``cancelled`` jobs, a cancel only unfinished ones, and a purge deletes only terminal jobs, so an
operator racing a worker or a client changes a job at most once and never a running job's result.
Jobs a statement did not change are read back to say why (gone, or in which state).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asyncgate.models.database import Database, dumps
from asyncgate.models.jobs import DONE_CHANNEL, NOTIFY_CHANNEL, REQUEUED_CHANNEL
from asyncgate.status import JobStatus


@dataclass(slots=True)
class Changes:
    """What a requeue or cancel of named jobs did to each of them."""

    changed: list[uuid.UUID] = field(default_factory=list)
    unchanged: dict[uuid.UUID, JobStatus] = field(default_factory=dict)
    """Jobs left as they were, with the state that stopped the change."""
    missing: list[uuid.UUID] = field(default_factory=list)
    """Ids with no job (never submitted, or already deleted)."""


# A failed or cancelled job runs again as if just submitted: outcome, lease and deadline cleared,
# attempts from 0, created_at now (so that the pending limits count from the requeue, not from
# the first submit). Workers are woken; API processes drop their cached answer for the job.
REQUEUE = f"""
WITH requeued AS (
    UPDATE async_jobs
    SET status = 'pending', status_code = NULL, result = NULL, result_bytes = NULL,
        result_content_type = NULL, error = NULL, attempts = 0, lease_owner = NULL,
        lease_expires_at = NULL, created_at = now(), started_at = NULL, completed_at = NULL,
        expires_at = NULL, deadline_at = NULL
    WHERE id = ANY(%(ids)s) AND status IN ('failed', 'cancelled')
    RETURNING id
)
SELECT id, pg_notify('{REQUEUED_CHANNEL}', id::text), pg_notify('{NOTIFY_CHANNEL}', '')
FROM requeued
"""

# `jobs requeue --failed-since`: the failed jobs that ended since then (cancelled ones were
# stopped on purpose and are requeued only by id).
FAILED_SINCE = "SELECT id FROM async_jobs WHERE status = 'failed' AND completed_at >= %s"

# An operator's cancel, as a client's (CANCEL in models.jobs) but of any owner's job: only an
# unfinished job; the lease goes, so its worker can no longer write a result, and the done
# channel tells it (and long-polls) at once.
CANCEL = f"""
UPDATE async_jobs
SET status = 'cancelled', status_code = %(status_code)s,
    error = %(error)s::jsonb || jsonb_build_object('extra_fields', jsonb_build_object(
        'provider', provider, 'model_requested', model, 'request_type', kind)),
    completed_at = now(), expires_at = now() + make_interval(secs => ttl_seconds),
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = ANY(%(ids)s) AND status IN ('pending', 'processing')
RETURNING id, pg_notify('{DONE_CHANNEL}', id::text)
"""

# Why the jobs a guarded statement left alone were left: their state now, or no row.
STATES = "SELECT id, status FROM async_jobs WHERE id = ANY(%s)"

# `jobs purge --before`: terminal jobs submitted before then, oldest first in bounded batches
# on async_jobs_list_idx; unfinished jobs are never purged. SKIP LOCKED: a sweeper or a second
# purge deleting alongside is not waited for.
PURGE_BEFORE = """
DELETE FROM async_jobs
WHERE id IN (
    SELECT id FROM async_jobs
    WHERE created_at < %s AND status IN ('completed', 'failed', 'cancelled')
    ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED
)
"""


class JobMaintenance:
    """Guarded state changes and deletes an operator asks for by hand."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def failed_since(self, since: datetime) -> list[uuid.UUID]:
        """Ids of the failed jobs that ended at or after ``since``."""
        return [row[0] for row in await self.db.read(FAILED_SINCE, (since,))]

    async def requeue(self, ids: Sequence[uuid.UUID]) -> Changes:
        """Send the failed or cancelled jobs among ``ids`` back to ``pending``."""
        async with self.db.connection() as conn:
            rows = await (await conn.execute(REQUEUE, {"ids": list(ids)})).fetchall()
        return await self._changes(ids, [row[0] for row in rows])

    async def cancel(self, ids: Sequence[uuid.UUID], error: dict[str, Any]) -> Changes:
        """Cancel the pending or processing jobs among ``ids``, storing ``error`` (the
        job's provider, model and kind are added as its ``extra_fields``)."""
        params = {"ids": list(ids), "status_code": error["status_code"], "error": dumps(error)}
        async with self.db.connection() as conn:
            rows = await (await conn.execute(CANCEL, params)).fetchall()
        return await self._changes(ids, [row[0] for row in rows])

    async def purge_before(self, before: datetime, batch: int) -> int:
        """Delete up to ``batch`` terminal jobs submitted before ``before`` (their files go with
        them), in one transaction; returns how many."""
        async with self.db.connection() as conn:
            cur = await conn.execute(PURGE_BEFORE, (before, batch))
            return cur.rowcount

    async def _changes(self, ids: Sequence[uuid.UUID], changed: list[uuid.UUID]) -> Changes:
        done = set(changed)
        rest = [i for i in dict.fromkeys(ids) if i not in done]
        states = (
            {row[0]: JobStatus(row[1]) for row in await self.db.read(STATES, (rest,))}
            if rest
            else {}
        )
        return Changes(
            changed=[i for i in dict.fromkeys(ids) if i in done],
            unchanged={i: states[i] for i in rest if i in states},
            missing=[i for i in rest if i not in states],
        )
