"""The job store: every statement that reads or changes ``async_jobs`` and ``async_job_files``.

Each state change is one guarded statement: a worker can only move a job it holds
(``status = 'processing' AND lease_owner = me``), so a worker that lost its lease cannot
overwrite the result of the job's new owner, and no job reaches two terminal states.

A lapsed lease sends the job back to ``pending`` but keeps its owner's name in ``lease_owner``
(with no lease): until another worker claims it, that owner, if it is alive after all (say,
cut off from the database for longer than its lease), may still renew it or write the result
it holds, instead of the job paying for a second upstream call.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from asyncgate.errors import error_body
from asyncgate.kinds import Kind
from asyncgate.models.database import Database, dumps, dumps_bytes
from asyncgate.status import JobStatus
from asyncgate.trace import TraceContext

NOTIFY_CHANNEL = "asyncgate_jobs"
"""Wakes idle workers: work may be waiting."""
DONE_CHANNEL = "asyncgate_done"
"""Carries the id of every job that just became terminal, sent by the statement that made it."""
_DONE = f"pg_notify('{DONE_CHANNEL}', id::text)"
REQUEUED_CHANNEL = "asyncgate_requeued"
"""Carries the id of every terminal job an operator sent back to ``pending``: API processes
drop their cached answer for it (:meth:`JobStore.forget`)."""


def _as_is(text: object) -> bytes:
    """The JSON text a :class:`Jsonb` parameter was given, sent as it is (text format)."""
    assert isinstance(text, bytes)
    return text


@dataclass(slots=True)
class NewFile:
    """An uploaded file to keep with its job until the job is deleted."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(slots=True)
class NewJob:
    """A validated submission, ready to be committed."""

    id: uuid.UUID
    kind: Kind
    owner_key_id: int | None
    provider: str
    model: str
    request: dict[str, Any]
    ttl_seconds: int
    files: list[NewFile] = field(default_factory=list)
    idempotency_key: str | None = None
    request_hash: bytes | None = None
    """SHA-256 of the canonical request; set with ``idempotency_key``."""
    timeout_seconds: int | None = None
    """The job must end within this many seconds of its submission (``x-bf-async-timeout``)."""
    trace: TraceContext | None = None
    """The submit's W3C trace context, kept for the job's upstream requests."""
    webhook_endpoint_id: int | None = None
    """The endpoint its ``x-bf-async-webhook`` named; told when the job ends."""
    request_json: bytes | None = None
    """``request`` as JSON text; set by :meth:`encoded_request`, so it is encoded only once."""

    def encoded_request(self) -> bytes:
        """``request`` as JSON text (UTF-8), encoded on the first call and kept."""
        if self.request_json is None:
            self.request_json = dumps_bytes(self.request)
        return self.request_json

    @property
    def idempotency_scope(self) -> tuple[int, str] | None:
        """(owner, key) under which the key is unique; anonymous jobs share owner 0."""
        if self.idempotency_key is None:
            return None
        return (self.owner_key_id or 0, self.idempotency_key)


@dataclass(frozen=True, slots=True)
class Committed:
    """A submission's job: the one just created, or, with ``replayed``, the first job of the
    same Idempotency-Key and request."""

    id: uuid.UUID
    created_at: datetime
    replayed: bool = False


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key already names a job of a different request; nothing was stored."""

    def __init__(self, key: str) -> None:
        super().__init__(
            "this Idempotency-Key was already used with a different request "
            "(kind, body or files); send a new key for a new request"
        )
        self.key = key


class IdempotencyUnresolved(Exception):
    """A conflicting Idempotency-Key's job vanished before it could be read (it was released
    or swept in between); the submission may be retried."""


@dataclass(slots=True)
class JobView:
    """What a poll may show; ``result_json`` is the stored JSON text, passed through unparsed."""

    id: uuid.UUID
    status: JobStatus
    created_at: datetime
    completed_at: datetime | None
    expires_at: datetime | None
    status_code: int | None
    result_json: str | None
    result_bytes: bytes | None
    result_content_type: str | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job as a list shows it: its state, never its request or result."""

    id: uuid.UUID
    kind: Kind
    status: JobStatus
    created_at: datetime
    completed_at: datetime | None
    expires_at: datetime | None
    status_code: int | None


@dataclass(slots=True)
class ClaimedJob:
    """A job this worker now holds under a lease."""

    id: uuid.UUID
    kind: Kind
    provider: str
    model: str
    request: dict[str, Any]
    attempts: int
    created_at: datetime
    deadline_at: datetime | None = None
    """When the job must have ended, if its client set a deadline."""
    trace: TraceContext | None = None
    """The trace context its submit carried."""


@dataclass(slots=True)
class Outcome:
    """The terminal state a worker wants to write for a job it holds."""

    id: uuid.UUID
    status: JobStatus
    """``completed`` or ``failed``."""
    status_code: int
    result: Any = None
    result_bytes: bytes | None = None
    result_content_type: str | None = None
    error: dict[str, Any] | None = None


_CACHEABLE_BYTES = 64 * 1024


def _small(view: JobView) -> bool:
    size = len(view.result_json or "") + len(view.result_bytes or b"")
    return size <= _CACHEABLE_BYTES


# Insert a whole batch of submissions in one statement (group commit): one round trip per batch.
# The rows travel as one JSON document, which is far cheaper to build than one array per column.
# Every row of a batch gets the same created_at (the transaction's now()), so one row comes back,
# and the NOTIFY rides along: without files a batch is one statement, one round trip.
INSERT_JOBS = f"""
WITH inserted AS (
    INSERT INTO async_jobs (id, kind, owner_key_id, provider, model, request, ttl_seconds,
                            deadline_at, traceparent, tracestate, webhook_endpoint_id)
    SELECT id, kind, owner_key_id, provider, model, request, ttl_seconds,
           now() + make_interval(secs => timeout_seconds), traceparent, tracestate,
           webhook_endpoint_id
    FROM jsonb_to_recordset(%t::jsonb) AS t(
        id uuid, kind text, owner_key_id bigint, provider text, model text, request jsonb,
        ttl_seconds integer, timeout_seconds integer, traceparent text, tracestate text,
        webhook_endpoint_id bigint)
    RETURNING created_at
)
SELECT count(*), max(created_at), pg_notify('{NOTIFY_CHANNEL}', '') FROM inserted
"""

# The group-commit insert for a batch holding Idempotency-Keys, still one statement and one
# round trip: rows whose (owner, key) exists are skipped (ON CONFLICT on the unique index),
# inserted ordered by key so that concurrent batches wait on each other in one order, never in
# a cycle. Answers one row with the inserted rows' created_at (submitted NULL), then one row
# per row not inserted: the id, created_at and hash of the job holding its key and whether that
# job is stale (its window passed or it expired: release it with RELEASE_IDEMPOTENCY_KEYS and
# insert again), or NULLs when it committed after this statement's snapshot (read it with
# RESOLVE_IDEMPOTENCY_KEYS). The lookup is LATERAL ... LIMIT 1 (the key is unique), which the
# planner cannot flatten into a join: it probes async_jobs_idempotency_idx row by row.
INSERT_IDEMPOTENT_JOBS = f"""
WITH rows AS (
    SELECT * FROM jsonb_to_recordset(%(rows)t::jsonb) AS t(
        id uuid, kind text, owner_key_id bigint, provider text, model text, request jsonb,
        ttl_seconds integer, idempotency_key text, request_hash text, timeout_seconds integer,
        traceparent text, tracestate text, webhook_endpoint_id bigint)
),
inserted AS (
    INSERT INTO async_jobs (id, kind, owner_key_id, provider, model, request, ttl_seconds,
                            idempotency_key, request_hash, deadline_at, traceparent, tracestate,
                            webhook_endpoint_id)
    SELECT id, kind, owner_key_id, provider, model, request, ttl_seconds,
           idempotency_key, decode(request_hash, 'hex'),
           now() + make_interval(secs => timeout_seconds), traceparent, tracestate,
           webhook_endpoint_id
    FROM rows
    ORDER BY coalesce(owner_key_id, 0), idempotency_key
    ON CONFLICT (coalesce(owner_key_id, 0), idempotency_key)
        WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, created_at
),
notified AS MATERIALIZED (SELECT pg_notify('{NOTIFY_CHANNEL}', ''))
SELECT NULL::uuid, NULL::uuid, (SELECT max(created_at) FROM inserted), NULL::bytea, NULL::bool
FROM notified
UNION ALL
SELECT r.id, h.id, h.created_at, h.request_hash,
       h.created_at <= now() - make_interval(secs => %(window)s) OR h.expires_at <= now()
FROM rows r
LEFT JOIN LATERAL (
    SELECT id, created_at, request_hash, expires_at FROM async_jobs
    WHERE coalesce(owner_key_id, 0) = coalesce(r.owner_key_id, 0)
      AND idempotency_key = r.idempotency_key
    LIMIT 1
) h ON true
WHERE r.id NOT IN (SELECT id FROM inserted)
"""

# Free the keys of jobs found stale by INSERT_IDEMPOTENT_JOBS (window passed, or the job
# expired), rechecked here, so that the key may name a new job.
RELEASE_IDEMPOTENCY_KEYS = """
UPDATE async_jobs SET idempotency_key = NULL, request_hash = NULL
WHERE id = ANY(%(ids)s)
  AND (created_at <= now() - make_interval(secs => %(window)s) OR expires_at <= now())
"""

# The jobs holding (owner, key) pairs the insert found taken by a batch that committed after
# its snapshot; a new statement has a new snapshot that sees them.
RESOLVE_IDEMPOTENCY_KEYS = """
SELECT coalesce(j.owner_key_id, 0), j.idempotency_key, j.id, j.created_at, j.request_hash
FROM unnest(%s::bigint[], %s::text[]) AS k(owner, key)
JOIN async_jobs j ON coalesce(j.owner_key_id, 0) = k.owner AND j.idempotency_key = k.key
"""

# Files of the batch's multipart jobs, in the same transaction as their jobs.
INSERT_FILES = """
INSERT INTO async_job_files (job_id, position, field, filename, content_type, data)
SELECT * FROM unnest(%s::uuid[], %s::smallint[], %s::text[], %s::text[], %s::text[], %s::bytea[])
"""

# Wake idle workers; delivered at commit, and merged when repeated within one transaction.
NOTIFY = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"

# Poll: expiry is enforced here, on read, whatever the sweeper has done so far.
GET_JOB = """
SELECT id, status, created_at, completed_at, expires_at, status_code,
       result::text, result_bytes, result_content_type, error
FROM async_jobs
WHERE id = %s AND kind = %s
  AND (owner_key_id IS NULL OR owner_key_id = %s)
  AND (expires_at IS NULL OR expires_at > now())
"""

# Job list, newest first; id breaks ties (a batch shares one created_at), so the order is total
# and a cursor (the last row's created_at and id) continues strictly after its page: jobs that
# arrive meanwhile are newer and never shift a page. Expiry is enforced here as in polls.
# {filters} takes LIST_FILTERS' fragments, so each combination is planned on its own, on
# async_jobs_owner_list_idx for a key's jobs or async_jobs_list_idx for an admin's (backwards).
LIST_JOBS = """
SELECT id, kind, status, created_at, completed_at, expires_at, status_code
FROM async_jobs
WHERE (expires_at IS NULL OR expires_at > now()){filters}
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""
LIST_FILTERS = {
    "owner": " AND owner_key_id = %(owner)s",
    "kind": " AND kind = %(kind)s",
    "status": " AND status = %(status)s",
    "after": " AND (created_at, id) < (%(after_at)s, %(after_id)s)",
}

# Claim the oldest pending jobs; SKIP LOCKED lets many workers claim at once without waiting.
# %(since)s bounds the scan of async_jobs_pending_idx from below: the entries of jobs claimed
# since the last VACUUM stay in that index (dead) until it runs, all at its low end, and a scan
# from the very start walks every one of them (a millisecond after a drain of 100,000 jobs).
# NULL: no bound, the whole queue. The bounds are one subquery and the rows are taken by id
# (= ANY of an array, not a join): planning then estimates no range and no join, for which it
# would look up the actual ends of the indexes, walking the dead entries there (it took longer
# than the claim itself).
CLAIM = """
UPDATE async_jobs j
SET status = 'processing', lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    attempts = j.attempts + 1, started_at = coalesce(j.started_at, now())
WHERE j.id = ANY(ARRAY(
    SELECT id FROM async_jobs
    WHERE status = 'pending'
      -- past the pending deadline a job is the reaper's to fail, not ours to run
      AND created_at >= (SELECT greatest(
          coalesce(%(since)s::timestamptz, '-infinity'),
          CASE WHEN %(max_pending)s::float8 IS NULL THEN '-infinity'::timestamptz
               ELSE now() - make_interval(secs => %(max_pending)s::float8) END))
      -- so is a job past the deadline its client set
      AND (deadline_at IS NULL OR deadline_at > now())
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)) AND j.status = 'pending'
RETURNING j.id, j.kind, j.provider, j.model, j.request, j.attempts, j.created_at, j.deadline_at,
          j.traceparent, j.tracestate
"""

# Heartbeat: extend the leases this worker still holds, taking back its requeued jobs that
# nobody claimed meanwhile; ids missing from the answer were lost to another worker.
RENEW = """
UPDATE async_jobs
SET status = 'processing', lease_expires_at = now() + make_interval(secs => %(lease)s)
WHERE id = ANY(%(ids)s) AND status IN ('processing', 'pending') AND lease_owner = %(owner)s
RETURNING id
"""

# A claim took back a job this worker is still running (requeued while it was cut off): the
# running execution goes on under the new lease, and the claim is not counted as an attempt.
UNCOUNT_CLAIM = """
UPDATE async_jobs SET attempts = greatest(attempts - 1, 0)
WHERE id = ANY(%(ids)s) AND status = 'processing' AND lease_owner = %(owner)s
"""

# Terminal write for a batch of jobs, guarded by state and lease owner (a requeued job nobody
# has claimed since still names its last owner, who may write the result it holds); each written
# job is announced on the done channel, delivered at commit. The arrays travel in binary: as
# text, every quote of every result's JSON is escaped (a regular expression per element, about
# 27 us per job in the worker; 1 us in binary).
FINISH = f"""
UPDATE async_jobs j
SET status = o.status, status_code = o.status_code, result = o.result::jsonb,
    result_bytes = o.result_bytes, result_content_type = o.content_type,
    -- extra_fields default to the job's own provider, model and kind; the worker's win.
    error = jsonb_build_object('extra_fields', jsonb_build_object(
                'provider', j.provider, 'model_requested', j.model, 'request_type', j.kind))
            || o.error::jsonb,
    completed_at = now(),
    expires_at = now() + make_interval(secs => j.ttl_seconds),
    lease_owner = NULL, lease_expires_at = NULL
FROM unnest(%(ids)b::uuid[], %(statuses)b::text[], %(codes)b::smallint[], %(results)b::text[],
            %(bytes)b::bytea[], %(types)b::text[], %(errors)b::text[])
    AS o(id, status, status_code, result, result_bytes, content_type, error)
WHERE j.id = o.id AND j.status IN ('processing', 'pending') AND j.lease_owner = %(owner)s
RETURNING j.id, pg_notify('{DONE_CHANNEL}', j.id::text)
"""

# Graceful shutdown: hand unfinished jobs back without counting the attempt against them.
RELEASE = """
UPDATE async_jobs
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    attempts = greatest(attempts - 1, 0)
WHERE id = ANY(%(ids)s) AND status IN ('processing', 'pending') AND lease_owner = %(owner)s
RETURNING id
"""

# A dead (or cut off) worker's jobs: lease lapsed and attempts left, so they run again. The
# owner stays named: if it is alive, it may still renew or finish the job until it is claimed.
REQUEUE_EXPIRED = """
UPDATE async_jobs
SET status = 'pending', lease_expires_at = NULL
WHERE id IN (
    SELECT id FROM async_jobs
    WHERE status = 'processing' AND lease_expires_at < now() AND attempts < %(max_attempts)s
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING id, kind, provider, attempts
"""

# The given error with the job's own provider, model and kind as its extra_fields.
_JOB_ERROR = """%(error)s::jsonb || jsonb_build_object(
        'extra_fields', jsonb_build_object(
            'provider', provider, 'model_requested', model, 'request_type', kind))"""

# A dead worker's jobs that used up their attempts fail instead of looping forever; only once
# the lease has been lapsed for another grace period, so that an owner that is alive and merely
# renewing late (after a database outage) keeps its job.
FAIL_EXHAUSTED = f"""
UPDATE async_jobs
SET status = 'failed', status_code = 502, error = {_JOB_ERROR},
    completed_at = now(), expires_at = now() + make_interval(secs => ttl_seconds),
    lease_owner = NULL, lease_expires_at = NULL
WHERE id IN (
    SELECT id FROM async_jobs
    WHERE status = 'processing' AND attempts >= %(max_attempts)s
      AND lease_expires_at < now() - make_interval(secs => %(grace)s)
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING id, kind, provider, attempts, {_DONE}
"""

# Jobs that waited pending longer than allowed fail rather than run uselessly late.
FAIL_STALE_PENDING = f"""
UPDATE async_jobs
SET status = 'failed', status_code = 504, error = {_JOB_ERROR},
    completed_at = now(), expires_at = now() + make_interval(secs => ttl_seconds),
    lease_owner = NULL
WHERE id IN (
    SELECT id FROM async_jobs
    WHERE status = 'pending' AND created_at < now() - make_interval(secs => %(max_pending)s)
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING id, kind, provider, attempts, {_DONE}
"""

# The queue for metrics: the partial indexes on pending and processing jobs answer all three
# without reading the (possibly huge) rest of the table.
QUEUE_DEPTH = """
SELECT (SELECT count(*) FROM async_jobs WHERE status = 'pending'),
       (SELECT count(*) FROM async_jobs WHERE status = 'processing'),
       (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
        FROM async_jobs WHERE status = 'pending')
"""

# Jobs whose client-set deadline passed before they ended, pending or running: they fail, the
# lease goes (the worker's write is refused) and the done notification aborts the execution.
FAIL_PAST_DEADLINE = f"""
UPDATE async_jobs
SET status = 'failed', status_code = 504, error = {_JOB_ERROR},
    completed_at = now(), expires_at = now() + make_interval(secs => ttl_seconds),
    lease_owner = NULL, lease_expires_at = NULL
WHERE id IN (
    SELECT id FROM async_jobs
    WHERE deadline_at < now() AND status IN ('pending', 'processing')
    ORDER BY deadline_at
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING id, kind, provider, attempts, {_DONE}
"""

# A client's cancel: only an unfinished job the caller may see; the lease goes with it, so its
# worker can no longer write a result (FINISH and RENEW want the lease owner) and learns of the
# cancel from the done channel, or at its next renewal at the latest.
CANCEL = f"""
UPDATE async_jobs
SET status = 'cancelled', status_code = %(status_code)s, error = {_JOB_ERROR},
    completed_at = now(), expires_at = now() + make_interval(secs => ttl_seconds),
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND kind = %(kind)s
  AND (owner_key_id IS NULL OR owner_key_id = %(key)s)
  AND (expires_at IS NULL OR expires_at > now())
  AND status IN ('pending', 'processing')
RETURNING id, status, created_at, completed_at, expires_at, status_code,
          result::text, result_bytes, result_content_type, error, {_DONE}
"""

# Waiters whose notification may have been lost (the listener reconnected): the ones among
# them no longer pending or processing, or gone.
UNFINISHED_AMONG = """
SELECT id FROM async_jobs WHERE id = ANY(%s) AND status IN ('pending', 'processing')
"""

# Files go upstream again with the job; read only for multipart kinds.
GET_FILES = """
SELECT field, filename, content_type, data FROM async_job_files
WHERE job_id = %s ORDER BY position
"""

# Sweeper: expired rows in bounded batches; SKIP LOCKED keeps concurrent sweepers harmless.
# The rows are deleted by ctid, read from async_jobs_expires_idx: the lock keeps it valid until
# commit, and it spares a primary-key probe per row (at a million rows, that was half the cost).
SWEEP = """
DELETE FROM async_jobs
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM async_jobs WHERE expires_at <= now()
    ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED
))
"""


def _finish_params(owner: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "owner": owner,
        "ids": [o.id for o in outcomes],
        "statuses": [o.status for o in outcomes],
        "codes": [o.status_code for o in outcomes],
        "results": [
            None if o.status is JobStatus.FAILED or o.result_bytes is not None else dumps(o.result)
            for o in outcomes
        ],
        "bytes": [o.result_bytes for o in outcomes],
        "types": [o.result_content_type for o in outcomes],
        "errors": [None if o.error is None else dumps(o.error) for o in outcomes],
    }


def _unstorable(outcome: Outcome, exc: psycopg.DataError) -> Outcome:
    error = error_body(
        502,
        f"the upstream answer cannot be stored: {exc.diag.message_primary}",
        error_type="upstream_invalid_response",
    )
    return Outcome(outcome.id, JobStatus.FAILED, 502, error=error)


@dataclass(slots=True)
class Transition:
    """A job moved by a maintenance statement (requeued or failed), for logging."""

    id: uuid.UUID
    kind: str
    provider: str
    attempts: int


class JobStore:
    """All job SQL behind one object; see each query's comment for why it exists.

    Terminal jobs never change again (every write is guarded by an unfinished ``status``), so
    polls of them are answered from a small per-process cache, checked for expiry on every hit.
    """

    def __init__(
        self, db: Database, *, cache_size: int = 10_000, idempotency_window_seconds: int = 86400
    ) -> None:
        self.db = db
        self.cache_size = cache_size
        self.idempotency_window_seconds = idempotency_window_seconds
        self._terminal: OrderedDict[tuple[uuid.UUID, Kind, int | None], JobView] = OrderedDict()
        self._forgotten = 0
        """How many times :meth:`forget` ran: a read that a forget overtook is not cached, as
        it may be the answer the forget was for."""

    # --- API side -------------------------------------------------------------------------

    async def insert_batch(self, jobs: Sequence[NewJob]) -> list[Committed | IdempotencyKeyReused]:
        """Commit ``jobs`` (and their files) in one transaction; one answer per job, in order.

        A job whose Idempotency-Key (for its owner) already names a job is not stored: it is
        answered with that job, replayed, when the request is the same, and with
        :class:`IdempotencyKeyReused` when it is not. Duplicates within the batch are
        answered the same way from the first of them.
        """
        if not any(job.idempotency_key is not None for job in jobs):
            async with self.db.connection() as conn:
                if not any(job.files for job in jobs):
                    created_at = await self._insert(conn, jobs)  # one statement: atomic
                else:
                    async with conn.transaction():
                        created_at = await self._insert(conn, jobs)
            return [Committed(job.id, created_at) for job in jobs]
        leaders: dict[tuple[int, str], NewJob] = {}
        for job in jobs:
            scope = job.idempotency_scope
            if scope is not None:
                leaders.setdefault(scope, job)
        unique = [
            j for j in jobs if j.idempotency_scope is None or leaders[j.idempotency_scope] is j
        ]
        for attempt in range(3):
            try:
                async with self.db.connection() as conn:
                    if not any(job.files for job in unique):
                        winners = await self._insert_idempotent(conn, unique)
                    else:
                        async with conn.transaction():
                            winners = await self._insert_idempotent(conn, unique)
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == 2:
                    raise
        answers: list[Committed | IdempotencyKeyReused] = []
        for job in jobs:
            winner_id, created_at, digest = winners[job.idempotency_scope or job.id]
            if winner_id == job.id:
                answers.append(Committed(job.id, created_at))
            elif digest == job.request_hash:
                answers.append(Committed(winner_id, created_at, replayed=True))
            else:
                assert job.idempotency_key is not None
                answers.append(IdempotencyKeyReused(job.idempotency_key))
        return answers

    @staticmethod
    def _rows(jobs: Sequence[NewJob]) -> Jsonb:
        """The batch as one JSON array of row objects, for ``jsonb_to_recordset``.

        Each request's JSON text is spliced in as it was encoded (:meth:`NewJob.encoded_request`)
        and the array is joined once: a large body is copied into the statement's parameter,
        never encoded, decoded or parsed again on this side.
        """
        parts = [b"["]
        for j in jobs:
            row = {
                "id": str(j.id),
                "kind": j.kind.value,
                "owner_key_id": j.owner_key_id,
                "provider": j.provider,
                "model": j.model,
                "ttl_seconds": j.ttl_seconds,
                "idempotency_key": j.idempotency_key,
                "request_hash": None if j.request_hash is None else j.request_hash.hex(),
                "timeout_seconds": j.timeout_seconds,
                "traceparent": j.trace and j.trace.traceparent,
                "tracestate": j.trace and j.trace.tracestate,
                "webhook_endpoint_id": j.webhook_endpoint_id,
            }
            if len(parts) > 1:
                parts.append(b",")
            parts += (dumps_bytes(row)[:-1], b',"request":', j.encoded_request(), b"}")
        parts.append(b"]")
        return Jsonb(b"".join(parts), dumps=_as_is)

    async def _insert_idempotent(
        self, conn: psycopg.AsyncConnection, jobs: Sequence[NewJob], *, again: bool = True
    ) -> dict[Any, tuple[uuid.UUID, datetime, bytes | None]]:
        """Insert; returns the winning job (id, created_at, request hash) of each job's
        (owner, key) scope, or of its own id for a job without a key. Jobs whose key is held
        by a stale job release it and are inserted once more (``again``)."""
        params = {"rows": self._rows(jobs), "window": self.idempotency_window_seconds}
        cur = await conn.execute(INSERT_IDEMPOTENT_JOBS, params)
        inserted_at: datetime | None = None
        taken: dict[uuid.UUID, tuple[Any, Any, Any, Any]] = {}
        for submitted, winner_id, created_at, digest, stale in await cur.fetchall():
            if submitted is None:
                inserted_at = created_at
            else:
                taken[submitted] = (winner_id, created_at, digest, stale)
        winners: dict[Any, tuple[uuid.UUID, datetime, bytes | None]] = {}
        unresolved: list[tuple[int, str]] = []
        retry: list[NewJob] = []
        stale_ids: list[uuid.UUID] = []
        for job in jobs:
            scope = job.idempotency_scope
            if job.id not in taken:
                assert inserted_at is not None
                winners[scope or job.id] = (job.id, inserted_at, job.request_hash)
                continue
            assert scope is not None  # a job without a key is always inserted
            winner_id, created_at, digest, stale = taken[job.id]
            if winner_id is None:
                unresolved.append(scope)
            elif stale and again:
                stale_ids.append(winner_id)
                retry.append(job)
            else:
                winners[scope] = (winner_id, created_at, bytes(digest))
        if unresolved:
            cur = await conn.execute(
                RESOLVE_IDEMPOTENCY_KEYS,
                ([owner for owner, _ in unresolved], [key for _, key in unresolved]),
            )
            for owner, key, winner_id, created_at, digest in await cur.fetchall():
                winners[(owner, key)] = (winner_id, created_at, bytes(digest))
            missing = [scope for scope in unresolved if scope not in winners]
            if missing:
                raise IdempotencyUnresolved(f"{len(missing)} Idempotency-Key job(s) vanished")
        inserted = [
            job for job in jobs if winners.get(job.idempotency_scope or job.id, (0,))[0] == job.id
        ]
        await self._insert_files(conn, inserted)
        if retry:
            window = self.idempotency_window_seconds
            await conn.execute(RELEASE_IDEMPOTENCY_KEYS, {"ids": stale_ids, "window": window})
            winners.update(await self._insert_idempotent(conn, retry, again=False))
        return winners

    @staticmethod
    async def _insert(conn: psycopg.AsyncConnection, jobs: Sequence[NewJob]) -> datetime:
        # jsonb_to_recordset reads the columns it names and ignores the idempotency members.
        cur = await conn.execute(INSERT_JOBS, (JobStore._rows(jobs),))
        row = await cur.fetchone()
        if row is None or row[0] != len(jobs):
            raise RuntimeError(f"batch insert wrote {row and row[0]} of {len(jobs)} jobs")
        created_at: datetime = row[1]
        await JobStore._insert_files(conn, jobs)
        return created_at

    @staticmethod
    async def _insert_files(conn: psycopg.AsyncConnection, jobs: Sequence[NewJob]) -> None:
        files = [(j.id, pos, f) for j in jobs for pos, f in enumerate(j.files)]
        if files:
            await conn.execute(
                INSERT_FILES,
                (
                    [job_id for job_id, _, _ in files],
                    [pos for _, pos, _ in files],
                    [f.field for _, _, f in files],
                    [f.filename for _, _, f in files],
                    [f.content_type for _, _, f in files],
                    [f.data for _, _, f in files],
                ),
            )

    async def get(self, job_id: uuid.UUID, kind: Kind, key_id: int | None) -> JobView | None:
        """The job as its owner (or anyone, for a public job) may see it; None if not visible."""
        cache_key = (job_id, kind, key_id)
        view = self._terminal.get(cache_key)
        if view is not None:
            assert view.expires_at is not None
            if view.expires_at > datetime.now(UTC):
                return view
            del self._terminal[cache_key]
            return None
        forgotten = self._forgotten
        rows = await self.db.read(GET_JOB, (job_id, kind.value, key_id))
        if not rows:
            return None
        row = rows[0]
        view = JobView(row[0], JobStatus(row[1]), *row[2:])
        cacheable = forgotten == self._forgotten and self.cache_size > 0
        if cacheable and view.status.terminal and _small(view):
            self._terminal[cache_key] = view
            if len(self._terminal) > self.cache_size:
                self._terminal.popitem(last=False)
        return view

    def forget(self, job_id: uuid.UUID | None = None) -> None:
        """Drop the cached answers for ``job_id`` (requeued by an operator), or all of them."""
        self._forgotten += 1
        if job_id is None:
            self._terminal.clear()
            return
        for cache_key in [k for k in self._terminal if k[0] == job_id]:
            del self._terminal[cache_key]

    async def queue_depth(self) -> tuple[int, int, float]:
        """Pending jobs, processing jobs, and the oldest pending job's age in seconds (0 when
        none is pending)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(QUEUE_DEPTH)
            pending, processing, oldest = await cur.fetchone() or (0, 0, 0.0)
        return int(pending), int(processing), float(oldest)

    async def list_jobs(
        self,
        *,
        owner: int | None,
        kind: Kind | None = None,
        status: JobStatus | None = None,
        limit: int = 20,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[JobSummary]:
        """Up to ``limit`` live jobs of ``owner`` (every owner's for None), newest first,
        strictly after the cursor ``after`` (a listed job's created_at and id)."""
        params: dict[str, Any] = {
            "limit": limit,
            "owner": owner,
            "kind": None if kind is None else kind.value,
            "status": None if status is None else status.value,
        }
        if after is not None:
            params["after_at"], params["after_id"] = after
        filters = "".join(
            LIST_FILTERS[name]
            for name, value in (
                ("owner", owner),
                ("kind", kind),
                ("status", status),
                ("after", after),
            )
            if value is not None
        )
        rows = await self.db.read(LIST_JOBS.format(filters=filters), params)
        return [JobSummary(r[0], Kind(r[1]), JobStatus(r[2]), *r[3:]) for r in rows]

    async def cancel(
        self, job_id: uuid.UUID, kind: Kind, key_id: int | None, error: dict[str, Any]
    ) -> tuple[JobView | None, bool]:
        """Cancel the job if it is unfinished; returns it as a poll would see it (None if not
        visible) and whether this call cancelled it.

        A job that is not cancelled here was already terminal (or is not visible): terminal
        states never change, so reading it afterwards shows the state that stopped the cancel.
        """
        params = {
            "id": job_id,
            "kind": kind.value,
            "key": key_id,
            "status_code": error["status_code"],
            "error": dumps(error),
        }
        async with self.db.connection() as conn:
            row = await (await conn.execute(CANCEL, params)).fetchone()
        if row is not None:
            return JobView(row[0], JobStatus(row[1]), *row[2:10]), True
        return await self.get(job_id, kind, key_id), False

    async def unfinished_among(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``ids`` still pending or processing."""
        return {row[0] for row in await self.db.read(UNFINISHED_AMONG, (list(ids),))}

    # --- worker side ----------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        max_pending_seconds: float | None = None,
        since: datetime | None = None,
    ) -> list[ClaimedJob]:
        """Take up to ``limit`` pending jobs, none pending over ``max_pending_seconds`` and,
        given ``since``, none created before it (older ones wait for a claim without it)."""
        params = {
            "owner": owner,
            "limit": limit,
            "lease": lease_seconds,
            "max_pending": max_pending_seconds,
            "since": since,
        }
        async with self.db.connection() as conn:
            cur = await conn.execute(CLAIM, params)
            rows = await cur.fetchall()
        return [
            ClaimedJob(
                row[0],
                Kind(row[1]),
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                TraceContext.parse(row[8], row[9]),
            )
            for row in rows
        ]

    async def renew(
        self, owner: str, ids: Iterable[uuid.UUID], lease_seconds: float
    ) -> set[uuid.UUID]:
        """Extend the leases; returns the ids still held by ``owner``."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                RENEW, {"owner": owner, "ids": list(ids), "lease": lease_seconds}
            )
            return {row[0] for row in await cur.fetchall()}

    async def uncount_claims(self, owner: str, ids: Iterable[uuid.UUID]) -> None:
        """Undo the attempt counted by claims of jobs ``owner`` was already running."""
        async with self.db.connection() as conn:
            await conn.execute(UNCOUNT_CLAIM, {"owner": owner, "ids": list(ids)})

    async def finish(self, owner: str, outcomes: Sequence[Outcome]) -> set[uuid.UUID]:
        """Write terminal states; returns the ids written (the others were no longer held).

        A result PostgreSQL refuses to store (say, JSON with a NUL character) fails its job with
        that reason instead of sinking the batch.
        """
        try:
            async with self.db.connection() as conn:
                cur = await conn.execute(FINISH, _finish_params(owner, outcomes))
                return {row[0] for row in await cur.fetchall()}
        except psycopg.DataError as exc:
            if len(outcomes) > 1:
                return {i for o in outcomes for i in await self.finish(owner, [o])}
            return await self.finish(owner, [_unstorable(outcomes[0], exc)])

    async def release(self, owner: str, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Hand jobs back to pending (graceful shutdown); returns the ids released."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(RELEASE, {"owner": owner, "ids": list(ids)})
            released = {row[0] for row in await cur.fetchall()}
            if released:
                await conn.execute(NOTIFY)
            return released

    async def requeue_expired(
        self,
        max_attempts: int,
        error: dict[str, Any],
        limit: int = 1000,
        *,
        grace_seconds: float = 0.0,
    ) -> tuple[list[Transition], list[Transition]]:
        """Return lapsed leases to pending, or fail them when out of attempts and lapsed for
        more than ``grace_seconds``."""
        params = {
            "max_attempts": max_attempts,
            "limit": limit,
            "error": dumps(error),
            "grace": grace_seconds,
        }
        async with self.db.connection() as conn, conn.transaction():
            requeued = await (await conn.execute(REQUEUE_EXPIRED, params)).fetchall()
            failed = await (await conn.execute(FAIL_EXHAUSTED, params)).fetchall()
            if requeued:
                await conn.execute(NOTIFY)
        return [Transition(*r) for r in requeued], [Transition(*r[:4]) for r in failed]

    async def fail_stale_pending(
        self, max_pending_seconds: float, error: dict[str, Any], limit: int = 1000
    ) -> list[Transition]:
        params = {"max_pending": max_pending_seconds, "limit": limit, "error": dumps(error)}
        async with self.db.connection() as conn:
            rows = await (await conn.execute(FAIL_STALE_PENDING, params)).fetchall()
        return [Transition(*r[:4]) for r in rows]

    async def fail_past_deadline(
        self, error: dict[str, Any], limit: int = 1000
    ) -> list[Transition]:
        """Fail the unfinished jobs whose ``x-bf-async-timeout`` deadline has passed."""
        params = {"limit": limit, "error": dumps(error)}
        async with self.db.connection() as conn:
            rows = await (await conn.execute(FAIL_PAST_DEADLINE, params)).fetchall()
        return [Transition(*r[:4]) for r in rows]

    async def files(self, job_id: uuid.UUID) -> list[NewFile]:
        return [NewFile(*row) for row in await self.db.read(GET_FILES, (job_id,))]

    async def sweep(self, batch: int) -> int:
        """Delete up to ``batch`` expired jobs (files go with them); returns how many."""
        async with self.db.connection() as conn:
            cur = await conn.execute(SWEEP, (batch,))
            return cur.rowcount
