"""Read-only queries for operators (``asyncgate jobs list``, ``show`` and ``stats``).

Unlike the API's reads these see every row, expired or not, whoever owns it: they answer what
is in the table, not what a client may poll.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncgate.kinds import Kind
from asyncgate.models.database import Database
from asyncgate.status import JobStatus


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as ``jobs list`` shows it: its state and times, never its request or result."""

    id: uuid.UUID
    kind: Kind
    status: JobStatus
    key_name: str | None
    model: str
    attempts: int
    status_code: int | None
    created_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobDetail:
    """Everything stored about one job except its uploaded files' contents."""

    id: uuid.UUID
    kind: Kind
    status: JobStatus
    key_name: str | None
    provider: str
    model: str
    request: Any
    result: Any
    result_bytes: int | None
    """Length of a binary result, which is not shown itself."""
    result_content_type: str | None
    status_code: int | None
    error: dict[str, Any] | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None
    deadline_at: datetime | None
    idempotency_key: str | None
    traceparent: str | None
    files: int


@dataclass(frozen=True, slots=True)
class JobStats:
    """The table at a glance: counts by (status, kind), the queue's age and recent output."""

    counts: dict[tuple[JobStatus, Kind], int]
    oldest_pending_seconds: float | None
    """Age of the oldest pending job; None when none is pending."""
    finished: dict[int, int]
    """Jobs that became terminal within the last N minutes, for N in :data:`WINDOWS`."""


WINDOWS = (1, 5, 15)
"""The minutes ``jobs stats`` counts finished jobs over."""

# `jobs list`, newest first like the API's list, over every row (expired ones too). {filters}
# takes LIST_FILTERS' fragments, so each combination is planned on its own.
LIST_JOBS = """
SELECT j.id, j.kind, j.status, k.name, j.model, j.attempts, j.status_code, j.created_at,
       j.completed_at
FROM async_jobs j LEFT JOIN virtual_keys k ON k.id = j.owner_key_id
WHERE true{filters}
ORDER BY j.created_at DESC, j.id DESC
LIMIT %(limit)s
"""
LIST_FILTERS = {
    "status": " AND j.status = %(status)s",
    "kind": " AND j.kind = %(kind)s",
    "key": " AND j.owner_key_id = %(key)s",
    "since": " AND j.created_at >= %(since)s",
}

# `jobs show`: one row, its owner's name and how many files came with it.
SHOW_JOB = """
SELECT j.id, j.kind, j.status, k.name, j.provider, j.model, j.request, j.result,
       octet_length(j.result_bytes), j.result_content_type, j.status_code, j.error, j.attempts,
       j.lease_owner, j.lease_expires_at, j.created_at, j.started_at, j.completed_at,
       j.expires_at, j.deadline_at, j.idempotency_key, j.traceparent,
       (SELECT count(*) FROM async_job_files f WHERE f.job_id = j.id)
FROM async_jobs j LEFT JOIN virtual_keys k ON k.id = j.owner_key_id
WHERE j.id = %s
"""

# `jobs --key NAME`: the id behind a key's name, disabled or not (its jobs are still there).
KEY_ID = "SELECT id FROM virtual_keys WHERE name = %s"

# `jobs stats`: one pass over the table for the counts; the oldest pending job from the partial
# pending index; terminal jobs of the last minutes (no index on completed_at: a scan, which an
# operator's occasional look can afford).
COUNTS = "SELECT status, kind, count(*) FROM async_jobs GROUP BY status, kind"
QUEUE_AND_THROUGHPUT = """
SELECT (SELECT extract(epoch FROM now() - min(created_at))::float8
        FROM async_jobs WHERE status = 'pending'),
       count(*) FILTER (WHERE completed_at > now() - interval '1 minute'),
       count(*) FILTER (WHERE completed_at > now() - interval '5 minutes'),
       count(*) FILTER (WHERE completed_at > now() - interval '15 minutes')
FROM async_jobs WHERE completed_at > now() - interval '15 minutes'
"""


class JobInspector:
    """The operator's read-only view of ``async_jobs``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def key_id(self, name: str) -> int | None:
        """The id of the key called ``name`` (disabled or not); None when there is none."""
        rows = await self.db.read(KEY_ID, (name,))
        return rows[0][0] if rows else None

    async def list(
        self,
        *,
        status: JobStatus | None = None,
        kind: Kind | None = None,
        key_id: int | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        """Up to ``limit`` jobs matching every filter given, newest first."""
        params: dict[str, Any] = {
            "status": status and status.value,
            "kind": kind and kind.value,
            "key": key_id,
            "since": since,
            "limit": limit,
        }
        filters = "".join(
            LIST_FILTERS[name] for name, value in params.items() if name != "limit" and value
        )
        rows = await self.db.read(LIST_JOBS.format(filters=filters), params)
        return [JobRow(r[0], Kind(r[1]), JobStatus(r[2]), *r[3:]) for r in rows]

    async def show(self, job_id: uuid.UUID) -> JobDetail | None:
        """The job with that id, expired or not; None when there is no such row."""
        rows = await self.db.read(SHOW_JOB, (job_id,))
        if not rows:
            return None
        r = rows[0]
        return JobDetail(r[0], Kind(r[1]), JobStatus(r[2]), *r[3:])

    async def stats(self) -> JobStats:
        """Counts over the whole table (one scan), and the queue's age from the pending index."""
        counts = {
            (JobStatus(status), Kind(kind)): int(n)
            for status, kind, n in await self.db.read(COUNTS, ())
        }
        [(oldest, *finished)] = await self.db.read(QUEUE_AND_THROUGHPUT, ())
        return JobStats(counts, oldest, dict(zip(WINDOWS, (int(n) for n in finished), strict=True)))
