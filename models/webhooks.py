"""The webhook store: every statement that reads or changes endpoints, deliveries and the
delivery log.

Deliveries are written by the trigger ``async_jobs_webhook`` (migration 0008) in the statement
that makes a job terminal; this store claims them under a lease, records each attempt, and
answers the management commands. Signing secrets enter and leave it sealed by a
:class:`~asyncgate.webhooks.SecretBox`: the database never holds one in the clear.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from asyncgate.models.database import Database
from asyncgate.webhooks import AttemptOutcome, DeliveryState, Event, SecretBox

WEBHOOK_CHANNEL = "asyncgate_webhooks"
"""Wakes delivery workers: a delivery became due (sent by the trigger, or by a redelivery)."""
_CLAIM_LOCK = 0x61737967_77686B73  # "asygwhks": serialises claims, so per-endpoint caps hold
_CLAIM_LOCK = _CLAIM_LOCK - (1 << 64) if _CLAIM_LOCK >= 1 << 63 else _CLAIM_LOCK


class DuplicateEndpointName(Exception):
    """An endpoint of that name exists already."""


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """An endpoint as the management commands show it: never its secret."""

    id: int
    name: str
    url: str
    events: tuple[Event, ...]
    owner_key: str | None
    """Name of the owning virtual key."""
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class EndpointRef:
    """What a submit needs to know about the endpoint it names."""

    id: int
    owner_key_id: int | None
    disabled: bool


@dataclass(slots=True)
class ClaimedDelivery:
    """A delivery this worker now holds, with what its attempt needs."""

    id: uuid.UUID
    event: Event
    endpoint_id: int
    endpoint_name: str
    url: str
    secret_sealed: bytes
    previous_secret_sealed: bytes | None
    """Still signing beside the current secret (a rotation's grace period)."""
    attempts: int
    created_at: datetime
    first_attempt_at: datetime
    payload: str | None
    """The body fixed at an earlier attempt; None on the first."""
    job_id: uuid.UUID | None
    request_type: str | None
    job_status: str | None
    job_status_code: int | None
    traceparent: str | None
    tracestate: str | None
    job_found: bool
    """The job is still stored (not swept) in the state the event announces."""
    job_result: Any
    """Its JSON result, when within the size cap."""
    job_result_binary: bool
    job_result_too_large: bool
    job_error: dict[str, Any] | None
    job_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One line of the delivery log."""

    attempt: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    outcome: AttemptOutcome
    error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """A delivery as the management commands show it."""

    id: uuid.UUID
    endpoint: str
    event: Event
    job_id: uuid.UUID | None
    state: DeliveryState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    log: tuple[AttemptRecord, ...] = ()


_ENDPOINT_COLUMNS = """e.id, e.name, e.url, e.events, k.name, e.created_at, e.disabled_at,
       e.disabled_reason, CASE WHEN e.previous_secret_expires_at > now()
                               THEN e.previous_secret_expires_at END"""

CREATE_ENDPOINT = """
INSERT INTO async_webhook_endpoints (name, url, events, owner_key_id, secret_sealed)
VALUES (%(name)s, %(url)s, %(events)s, %(owner)s, %(secret)s)
RETURNING id
"""

LIST_ENDPOINTS = f"""
SELECT {_ENDPOINT_COLUMNS}
FROM async_webhook_endpoints e LEFT JOIN virtual_keys k ON k.id = e.owner_key_id
{{where}}
ORDER BY e.name
"""

# Submits naming an endpoint: by its unique name, one index probe.
RESOLVE_ENDPOINT = """
SELECT id, owner_key_id, disabled_at IS NOT NULL FROM async_webhook_endpoints WHERE name = %s
"""

# Enabling resets the exhaustion streak, or the next exhausted delivery would disable it again,
# and wakes the delivery workers: the endpoint's waiting deliveries are due.
SET_DISABLED = f"""
UPDATE async_webhook_endpoints
SET disabled_at = CASE WHEN %(disable)s THEN coalesce(disabled_at, now()) END,
    disabled_reason = CASE WHEN %(disable)s THEN coalesce(disabled_reason, %(reason)s) END,
    exhausted_in_a_row = CASE WHEN %(disable)s THEN exhausted_in_a_row ELSE 0 END
WHERE name = %(name)s
RETURNING id, CASE WHEN NOT %(disable)s THEN pg_notify('{WEBHOOK_CHANNEL}', '') END
"""

# The current secret becomes the previous one, signing beside the new for the grace period.
ROTATE_SECRET = """
UPDATE async_webhook_endpoints
SET previous_secret_sealed = CASE WHEN %(grace)s > 0 THEN secret_sealed END,
    previous_secret_expires_at = CASE WHEN %(grace)s > 0
                                      THEN now() + make_interval(secs => %(grace)s) END,
    secret_sealed = %(secret)s
WHERE name = %(name)s
RETURNING id
"""

CREATE_TEST_DELIVERY = f"""
WITH created AS (
    INSERT INTO async_webhook_deliveries (id, endpoint_id, event)
    SELECT gen_random_uuid(), id, 'webhook.test' FROM async_webhook_endpoints WHERE name = %s
    RETURNING id
)
SELECT id, pg_notify('{WEBHOOK_CHANNEL}', '') FROM created
"""

# Due deliveries, oldest first, at most ``per_endpoint`` in flight per enabled endpoint (those
# in flight counted from the partial index of delivering rows). A delivering row's
# next_attempt_at is its lease's end, so a dead worker's delivery simply becomes due again.
# Claims run one at a time (an advisory lock held by their transaction), so the counts stay
# true; the UPDATE rechecks due-ness in case a late owner recorded the row meanwhile.
CLAIM = """
WITH due AS (
    SELECT d.id
    FROM async_webhook_endpoints e
    CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM async_webhook_deliveries b
        WHERE b.endpoint_id = e.id AND b.state = 'delivering' AND b.next_attempt_at > now()
    ) busy
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at FROM async_webhook_deliveries d
        WHERE d.endpoint_id = e.id AND d.finished_at IS NULL AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT greatest(%(per_endpoint)s - busy.n, 0)
    ) d
    WHERE e.disabled_at IS NULL {only}
    ORDER BY d.next_attempt_at
    LIMIT %(limit)s
),
claimed AS (
    UPDATE async_webhook_deliveries d
    SET state = 'delivering', lease_owner = %(owner)s, attempts = d.attempts + 1,
        next_attempt_at = now() + make_interval(secs => %(lease)s),
        first_attempt_at = coalesce(d.first_attempt_at, now())
    FROM due
    WHERE d.id = due.id AND d.finished_at IS NULL AND d.next_attempt_at <= now()
    RETURNING d.*
)
SELECT c.id, c.event, e.id, e.name, e.url, e.secret_sealed,
       CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_sealed END,
       c.attempts, c.created_at, c.first_attempt_at, c.payload, c.job_id, c.request_type,
       c.job_status, c.job_status_code, c.traceparent, c.tracestate,
       j.id IS NOT NULL,
       CASE WHEN octet_length(j.result::text) <= %(cap)s THEN j.result END,
       j.result_bytes IS NOT NULL,
       coalesce(octet_length(j.result::text) > %(cap)s, false),
       j.error, j.expires_at
FROM claimed c
JOIN async_webhook_endpoints e ON e.id = c.endpoint_id
LEFT JOIN async_jobs j ON c.payload IS NULL AND j.id = c.job_id AND j.status = c.job_status
"""

# One attempt's outcome, guarded by the lease, logged, and counted in the endpoint's
# exhaustion streak (reset by a delivery); the streak reaching the threshold disables it.
RECORD = """
WITH d AS (
    UPDATE async_webhook_deliveries
    SET state = %(state)s, lease_owner = NULL,
        next_attempt_at = CASE WHEN %(state)s = 'pending'
                               THEN now() + make_interval(secs => %(delay)s)
                               ELSE now() END,
        finished_at = CASE WHEN %(state)s = 'pending' THEN NULL ELSE now() END,
        payload = coalesce(payload, %(payload)s),
        last_status_code = %(status_code)s, last_error = %(error)s
    WHERE id = %(id)s AND state = 'delivering' AND lease_owner = %(owner)s
    RETURNING id, endpoint_id, attempts
),
logged AS (
    INSERT INTO async_webhook_attempts
        (delivery_id, attempt, attempted_at, status_code, latency_ms, outcome, error)
    SELECT id, attempts, %(attempted_at)s, %(status_code)s, %(latency)s, %(outcome)s, %(error)s
    FROM d
    ON CONFLICT DO NOTHING
),
streak AS (
    UPDATE async_webhook_endpoints e
    SET exhausted_in_a_row = CASE WHEN %(outcome)s = 'exhausted'
                                  THEN e.exhausted_in_a_row + 1 ELSE 0 END,
        disabled_at = CASE WHEN %(outcome)s = 'exhausted'
                                AND e.exhausted_in_a_row + 1 >= %(disable_after)s
                           THEN coalesce(e.disabled_at, now()) ELSE e.disabled_at END,
        disabled_reason = CASE WHEN %(outcome)s = 'exhausted'
                                    AND e.exhausted_in_a_row + 1 >= %(disable_after)s
                               THEN coalesce(e.disabled_reason, %(disabled_reason)s)
                               ELSE e.disabled_reason END
    FROM d
    WHERE e.id = d.endpoint_id AND %(outcome)s IN ('delivered', 'exhausted')
      AND (e.exhausted_in_a_row > 0 OR %(outcome)s = 'exhausted')
    RETURNING e.exhausted_in_a_row = %(disable_after)s AND %(outcome)s = 'exhausted'
)
SELECT (SELECT count(*) FROM d), coalesce((SELECT bool_or(s) FROM streak s(s)), false)
"""

LIST_DELIVERIES = """
SELECT d.id, e.name, d.event, d.job_id, d.state, d.attempts, d.created_at,
       CASE WHEN d.finished_at IS NULL THEN d.next_attempt_at END, d.finished_at,
       d.last_status_code, d.last_error
FROM async_webhook_deliveries d JOIN async_webhook_endpoints e ON e.id = d.endpoint_id
WHERE (%(endpoint)s::text IS NULL OR e.name = %(endpoint)s)
  AND (%(state)s::text IS NULL OR d.state = %(state)s)
  AND (%(since)s::timestamptz IS NULL OR d.created_at >= %(since)s)
  AND (%(job)s::uuid IS NULL OR d.job_id = %(job)s)
  AND (%(id)s::uuid IS NULL OR d.id = %(id)s)
ORDER BY d.created_at DESC, d.id DESC
LIMIT %(limit)s
"""

GET_ATTEMPTS = """
SELECT attempt, attempted_at, status_code, latency_ms, outcome, error
FROM async_webhook_attempts WHERE delivery_id = %s ORDER BY attempt
"""

# A finished delivery goes out again under the same webhook-id, with a fresh retry window.
REDELIVER = f"""
WITH again AS (
    UPDATE async_webhook_deliveries
    SET state = 'pending', next_attempt_at = now(), finished_at = NULL, first_attempt_at = NULL
    WHERE id = %s AND finished_at IS NOT NULL
    RETURNING id
)
SELECT id, pg_notify('{WEBHOOK_CHANNEL}', '') FROM again
"""

# Retention: finished deliveries (attempts go by cascade), and deliveries that waited for a
# disabled endpoint longer than the retention period, in bounded batches.
SWEEP = """
DELETE FROM async_webhook_deliveries
WHERE id IN (
    SELECT id FROM async_webhook_deliveries
    WHERE created_at < now() - make_interval(secs => %(retention)s)
      AND coalesce(finished_at, created_at) < now() - make_interval(secs => %(retention)s)
      AND state <> 'delivering'
    ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
"""


class WebhookStore:
    """Endpoints, deliveries and their log, in PostgreSQL; see the module docstring."""

    def __init__(self, db: Database, box: SecretBox | None) -> None:
        self.db = db
        self.box = box
        """None when ``webhooks.secret_key`` is unset: endpoints can then not be created."""

    # --- endpoints -------------------------------------------------------------------------

    async def create_endpoint(
        self,
        name: str,
        url: str,
        events: Sequence[Event],
        owner_key_id: int | None,
        secret: str,
    ) -> EndpointInfo:
        """Store a new endpoint with ``secret`` sealed; raises DuplicateEndpointName."""
        assert self.box is not None, "webhooks.secret_key is required to create endpoints"
        params = {
            "name": name,
            "url": url,
            "events": [e.value for e in events],
            "owner": owner_key_id,
            "secret": self.box.seal(secret),
        }
        try:
            async with self.db.connection() as conn:
                await conn.execute(CREATE_ENDPOINT, params)
        except psycopg.errors.UniqueViolation:
            raise DuplicateEndpointName(name) from None
        endpoint = await self.endpoint(name)
        assert endpoint is not None
        return endpoint

    async def endpoints(self) -> list[EndpointInfo]:
        rows = await self.db.read(LIST_ENDPOINTS.format(where=""), ())
        return [_endpoint(row) for row in rows]

    async def endpoint(self, name: str) -> EndpointInfo | None:
        rows = await self.db.read(LIST_ENDPOINTS.format(where="WHERE e.name = %s"), (name,))
        return _endpoint(rows[0]) if rows else None

    async def resolve(self, name: str) -> EndpointRef | None:
        """The endpoint a submit names, or None if there is none of that name."""
        rows = await self.db.read(RESOLVE_ENDPOINT, (name,))
        return EndpointRef(*rows[0]) if rows else None

    async def set_disabled(
        self, name: str, disabled: bool, reason: str = "disabled by hand"
    ) -> bool:
        """Disable or enable the endpoint; False if there is none of that name."""
        params = {"name": name, "disable": disabled, "reason": reason}
        async with self.db.connection() as conn:
            return (await (await conn.execute(SET_DISABLED, params)).fetchone()) is not None

    async def rotate_secret(self, name: str, secret: str, grace_seconds: float) -> bool:
        """Replace the signing secret; the old one signs beside it for ``grace_seconds``."""
        assert self.box is not None, "webhooks.secret_key is required to rotate secrets"
        params = {"name": name, "secret": self.box.seal(secret), "grace": grace_seconds}
        async with self.db.connection() as conn:
            return (await (await conn.execute(ROTATE_SECRET, params)).fetchone()) is not None

    # --- deliveries ------------------------------------------------------------------------

    async def create_test_delivery(self, name: str) -> uuid.UUID | None:
        """Queue a ``webhook.test`` event for the endpoint; None if there is none of that name."""
        async with self.db.connection() as conn:
            row = await (await conn.execute(CREATE_TEST_DELIVERY, (name,))).fetchone()
        return None if row is None else row[0]

    async def claim(
        self,
        owner: str,
        limit: int,
        *,
        per_endpoint: int,
        lease_seconds: float,
        max_payload_bytes: int,
        only: uuid.UUID | None = None,
    ) -> list[ClaimedDelivery]:
        """Take up to ``limit`` due deliveries (only the one ``only`` names, if given)."""
        params = {
            "owner": owner,
            "limit": limit,
            "per_endpoint": per_endpoint,
            "lease": lease_seconds,
            "cap": max_payload_bytes,
            "only": only,
        }
        statement = CLAIM.format(only="" if only is None else "AND d.id = %(only)s")
        # One round trip (a pipeline) for the transaction's four statements: the claim still
        # runs after the lock is granted, on a snapshot that sees the claims committed before.
        async with self.db.connection() as conn, conn.pipeline(), conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
            cursor = await conn.execute(statement, params)
        rows = await cursor.fetchall()
        return [ClaimedDelivery(row[0], Event(row[1]), *row[2:]) for row in rows]

    async def record(
        self,
        owner: str,
        delivery: ClaimedDelivery,
        *,
        outcome: AttemptOutcome,
        attempted_at: datetime,
        latency_ms: int,
        status_code: int | None,
        error: str | None,
        payload: str,
        retry_in: float = 0.0,
        disable_after: int,
    ) -> tuple[bool, bool]:
        """Log an attempt and move the delivery on; returns (recorded, endpoint disabled now).

        Not recorded means the lease was lost (another worker holds the delivery now).
        """
        state = {
            AttemptOutcome.DELIVERED: DeliveryState.DELIVERED,
            AttemptOutcome.RETRY: DeliveryState.PENDING,
            AttemptOutcome.FAILED: DeliveryState.FAILED,
            AttemptOutcome.EXHAUSTED: DeliveryState.EXHAUSTED,
        }[outcome]
        params = {
            "id": delivery.id,
            "owner": owner,
            "state": state.value,
            "delay": retry_in,
            "payload": payload,
            "status_code": status_code,
            "error": None if error is None else error[:300],
            "attempted_at": attempted_at,
            "latency": latency_ms,
            "outcome": outcome.value,
            "disable_after": disable_after,
            "disabled_reason": f"deliveries exhausted {disable_after} times in a row",
        }
        async with self.db.connection() as conn:
            row = await (await conn.execute(RECORD, params)).fetchone()
        assert row is not None
        return bool(row[0]), bool(row[1])

    async def deliveries(
        self,
        *,
        endpoint: str | None = None,
        state: DeliveryState | None = None,
        since: datetime | None = None,
        job_id: uuid.UUID | None = None,
        limit: int = 50,
    ) -> list[DeliveryInfo]:
        """Deliveries newest first, filtered by endpoint name, state, creation time or job."""
        params = {
            "endpoint": endpoint,
            "state": None if state is None else state.value,
            "since": since,
            "job": job_id,
            "id": None,
            "limit": limit,
        }
        return [_delivery(row) for row in await self.db.read(LIST_DELIVERIES, params)]

    async def delivery(self, delivery_id: uuid.UUID) -> DeliveryInfo | None:
        """One delivery with its attempt log."""
        params = {"endpoint": None, "state": None, "since": None, "job": None}
        rows = await self.db.read(LIST_DELIVERIES, {**params, "id": delivery_id, "limit": 1})
        if not rows:
            return None
        log = await self.db.read(GET_ATTEMPTS, (delivery_id,))
        attempts = tuple(
            AttemptRecord(r[0], r[1], r[2], r[3], AttemptOutcome(r[4]), r[5]) for r in log
        )
        return dataclasses.replace(_delivery(rows[0]), log=attempts)

    async def redeliver(self, delivery_id: uuid.UUID) -> bool:
        """Send a finished delivery again (same ``webhook-id``); False if it is not finished
        (still queued or in flight) or unknown."""
        async with self.db.connection() as conn:
            return (await (await conn.execute(REDELIVER, (delivery_id,))).fetchone()) is not None

    async def sweep(self, retention_seconds: float, batch: int) -> int:
        """Delete up to ``batch`` deliveries past retention (attempts go with them)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(SWEEP, {"retention": retention_seconds, "limit": batch})
            return cur.rowcount


def _endpoint(row: tuple[Any, ...]) -> EndpointInfo:
    return EndpointInfo(row[0], row[1], row[2], tuple(Event(e) for e in row[3]), *row[4:])


def _delivery(row: tuple[Any, ...]) -> DeliveryInfo:
    return DeliveryInfo(row[0], row[1], Event(row[2]), row[3], DeliveryState(row[4]), *row[5:11])
