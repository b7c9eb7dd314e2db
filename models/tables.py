"""The schema as SQLAlchemy Core tables: the reference the migrations are checked against.

Runtime SQL is written by hand in :mod:`models.jobs` and :mod:`models.keys`; these definitions
exist for alembic and for DBAs reading the code. Every table and column carries a comment that
ends up in PostgreSQL (``\\d+ async_jobs`` shows it).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from asyncgate.kinds import Kind
from asyncgate.status import JobStatus
from asyncgate.webhooks import JOB_EVENTS, AttemptOutcome, DeliveryState, Event

metadata = MetaData(
    naming_convention={
        "pk": "%(table_name)s_pkey",
        "fk": "%(table_name)s_%(column_0_name)s_fkey",
        "ck": "%(table_name)s_%(constraint_name)s_check",
        "uq": "%(table_name)s_%(column_0_name)s_key",
        "ix": "%(table_name)s_%(column_0_name)s_idx",
    }
)

_kinds_sql = ", ".join(f"'{k.value}'" for k in Kind)
_statuses_sql = ", ".join(f"'{s.value}'" for s in JobStatus)

TRACEPARENT_COMMENT = (
    "W3C traceparent sent with the submit (valid ones only); each upstream attempt is sent as "
    "its child. NULL: the client sent none."
)
TRACESTATE_COMMENT = "W3C tracestate sent beside traceparent, forwarded as it came (<= 512 bytes)."
TRACEPARENT_FORM = "traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'"
TRACESTATE_FORM = (
    "tracestate IS NULL OR (traceparent IS NOT NULL AND octet_length(tracestate) <= 512)"
)

LEASE_OWNER_COMMENT = (
    "Worker holding the job while it is processing; on a pending job, the worker whose lease "
    "lapsed, which may still renew it or write its result until another worker claims it."
)

STATUS_COMMENT = (
    "pending -> processing -> completed | failed; processing may return to pending; "
    "pending or processing -> cancelled when the client cancels."
)

JOBS_STORAGE = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
    # Inserts leave 15% of each page free, so a job's updates stay on its page (migration 0012).
    "fillfactor": "85",
}
"""Storage parameters of ``async_jobs`` (``\\d+ async_jobs`` shows them as Options)."""

virtual_keys = Table(
    "virtual_keys",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True, comment="Surrogate key."),
    Column("name", Text, nullable=False, unique=True, comment="Human name given at creation."),
    Column(
        "key_hash",
        LargeBinary,
        nullable=False,
        unique=True,
        comment="SHA-256 of the full key; the key itself is never stored.",
    ),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("now()"),
        comment="When the key was created.",
    ),
    Column(
        "disabled_at",
        DateTime(timezone=True),
        comment="When the key was disabled; a disabled key is treated as unknown.",
    ),
    Column(
        "is_admin",
        Boolean,
        nullable=False,
        server_default=text("false"),
        comment="An admin key lists every job, not only its own; it polls like any other key.",
    ),
    CheckConstraint("octet_length(key_hash) = 32", name="key_hash_length"),
    comment="Virtual keys (sk-bf-...) that own jobs; only their hashes are kept.",
)

async_jobs = Table(
    "async_jobs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, comment="Job id returned to the client."),
    Column("kind", Text, nullable=False, comment="Kind of inference request (request_type)."),
    Column(
        "status",
        Text,
        nullable=False,
        server_default=text("'pending'"),
        comment=STATUS_COMMENT,
    ),
    Column(
        "owner_key_id",
        BigInteger,
        ForeignKey("virtual_keys.id"),
        comment="Virtual key that submitted the job; NULL for a public job.",
    ),
    Column("provider", Text, nullable=False, comment="Provider named by the requested model."),
    Column("model", Text, nullable=False, comment="Requested model as provider/model."),
    Column(
        "request",
        JSONB,
        nullable=False,
        comment="The request body as accepted (uploaded files are in async_job_files).",
    ),
    Column(
        "ttl_seconds",
        Integer,
        nullable=False,
        comment="Seconds the result is kept after completion.",
    ),
    Column("result", JSONB, comment="Upstream JSON answer of a completed job."),
    Column("result_bytes", LargeBinary, comment="Upstream binary answer (speech audio)."),
    Column("result_content_type", Text, comment="Content type of result_bytes."),
    Column(
        "status_code",
        SmallInteger,
        comment="HTTP status of the final upstream answer, or 502/504 for gateway-side failures.",
    ),
    Column("error", JSONB, comment="BifrostError body of a failed or cancelled job."),
    Column(
        "attempts",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Executions started (claims); a handed-back job does not count.",
    ),
    Column("lease_owner", Text, comment=LEASE_OWNER_COMMENT),
    Column(
        "lease_expires_at",
        DateTime(timezone=True),
        comment="When the lease lapses unless renewed; then the job is claimed again.",
    ),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("now()"),
        comment="When the job was accepted (its 202 was sent after this commit).",
    ),
    Column("started_at", DateTime(timezone=True), comment="First claim by a worker."),
    Column("completed_at", DateTime(timezone=True), comment="When the job became terminal."),
    Column(
        "expires_at",
        DateTime(timezone=True),
        comment="completed_at + ttl_seconds; after it polls answer 404 and the sweeper deletes.",
    ),
    Column(
        "deadline_at",
        DateTime(timezone=True),
        comment="When the job must have ended (submit time + x-bf-async-timeout); past it an "
        "unfinished job fails with 504. NULL: no deadline of its own.",
    ),
    Column(
        "idempotency_key",
        Text,
        comment=(
            "Idempotency-Key of the submit, unique per owner while it holds; cleared when its "
            "window has passed or the job expired, so the key may be used again."
        ),
    ),
    Column(
        "request_hash",
        LargeBinary,
        comment=(
            "SHA-256 of the canonical request (kind, body, files) sent with idempotency_key; a "
            "reuse of the key with another request is refused."
        ),
    ),
    Column("traceparent", Text, comment=TRACEPARENT_COMMENT),
    Column("tracestate", Text, comment=TRACESTATE_COMMENT),
    Column(
        "webhook_endpoint_id",
        BigInteger,
        ForeignKey("async_webhook_endpoints.id"),
        comment="Endpoint named by x-bf-async-webhook; its delivery row is written by the "
        "trigger async_jobs_webhook in the statement that makes the job terminal.",
    ),
    CheckConstraint(f"kind IN ({_kinds_sql})", name="kind"),
    CheckConstraint(f"status IN ({_statuses_sql})", name="status"),
    CheckConstraint("ttl_seconds > 0", name="ttl_positive"),
    CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
    CheckConstraint(
        "status <> 'processing' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
        name="processing_has_lease",
    ),
    CheckConstraint(
        "status NOT IN ('completed', 'failed', 'cancelled') "
        "OR (completed_at IS NOT NULL AND expires_at IS NOT NULL AND lease_owner IS NULL)",
        name="terminal_has_times",
    ),
    CheckConstraint(
        "status <> 'completed' OR result IS NOT NULL OR result_bytes IS NOT NULL",
        name="completed_has_result",
    ),
    CheckConstraint(
        "status NOT IN ('failed', 'cancelled') OR error IS NOT NULL", name="failed_has_error"
    ),
    CheckConstraint("status <> 'pending' OR lease_expires_at IS NULL", name="pending_has_no_lease"),
    CheckConstraint(
        "char_length(idempotency_key) >= 1 AND char_length(idempotency_key) <= 255",
        name="idempotency_key_length",
    ),
    CheckConstraint("octet_length(request_hash) = 32", name="request_hash_length"),
    CheckConstraint(
        "(idempotency_key IS NULL) = (request_hash IS NULL)", name="idempotency_has_hash"
    ),
    CheckConstraint(TRACEPARENT_FORM, name="traceparent_form"),
    CheckConstraint(TRACESTATE_FORM, name="tracestate_form"),
    Index(
        "async_jobs_pending_idx",
        "created_at",
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "async_jobs_lease_idx",
        "lease_expires_at",
        postgresql_where=text("status = 'processing'"),
    ),
    Index(
        "async_jobs_expires_idx",
        "expires_at",
        postgresql_where=text("expires_at IS NOT NULL"),
    ),
    Index(
        "async_jobs_deadline_idx",
        "deadline_at",
        postgresql_where=text("deadline_at IS NOT NULL"),
    ),
    # The job list reads newest first (created_at DESC, id DESC): a backward scan of these.
    Index("async_jobs_owner_list_idx", "owner_key_id", "created_at", "id"),
    Index("async_jobs_list_idx", "created_at", "id"),
    # Anonymous jobs (owner NULL) share owner 0: identity ids start at 1.
    Index(
        "async_jobs_idempotency_idx",
        text("coalesce(owner_key_id, 0)"),
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    comment="One row per async inference job, from submit until the sweeper deletes it.",
    # Vacuumed after 1% of it changed: each job leaves two dead versions, and their entries in
    # async_jobs_pending_idx, until VACUUM (migration 0010).
    postgresql_with=JOBS_STORAGE,
)

async_job_files = Table(
    "async_job_files",
    metadata,
    Column(
        "job_id",
        UUID(as_uuid=True),
        ForeignKey("async_jobs.id", ondelete="CASCADE"),
        nullable=False,
        comment="Job the file was uploaded with; deleted with it.",
    ),
    Column("position", SmallInteger, nullable=False, comment="Order of the file in the upload."),
    Column("field", Text, nullable=False, comment="Multipart field name (file, image, mask...)."),
    Column("filename", Text, comment="File name sent by the client."),
    Column("content_type", Text, comment="Content type sent by the client."),
    Column("data", LargeBinary, nullable=False, comment="File contents."),
    PrimaryKeyConstraint("job_id", "position"),
    comment="Files uploaded with multipart jobs (transcriptions, image edits and variations).",
)

_job_events_sql = ", ".join(f"'{e.value}'" for e in JOB_EVENTS)
_events_sql = ", ".join(f"'{e.value}'" for e in Event)
_outcomes_sql = ", ".join(f"'{o.value}'" for o in AttemptOutcome)
_delivery_states_sql = ", ".join(f"'{s.value}'" for s in DeliveryState)

async_webhook_endpoints = Table(
    "async_webhook_endpoints",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True, comment="Surrogate key."),
    Column(
        "name",
        Text,
        nullable=False,
        unique=True,
        comment="Name given at creation, sent by clients in x-bf-async-webhook.",
    ),
    Column("url", Text, nullable=False, comment="Where deliveries are POSTed."),
    Column(
        "events",
        ARRAY(Text),
        nullable=False,
        comment="Events delivered to this endpoint (async_job.completed, .failed, .cancelled).",
    ),
    Column(
        "owner_key_id",
        BigInteger,
        ForeignKey("virtual_keys.id"),
        comment="Virtual key whose jobs alone may name the endpoint; NULL: any job may.",
    ),
    Column(
        "secret_sealed",
        LargeBinary,
        nullable=False,
        comment="Signing secret (whsec_...), encrypted with webhooks.secret_key: never plain.",
    ),
    Column(
        "previous_secret_sealed",
        LargeBinary,
        comment="Secret before the last rotation, still signing beside the new one until "
        "previous_secret_expires_at.",
    ),
    Column(
        "previous_secret_expires_at",
        DateTime(timezone=True),
        comment="End of the rotation's grace period; after it only the new secret signs.",
    ),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("now()"),
        comment="When the endpoint was created.",
    ),
    Column(
        "disabled_at",
        DateTime(timezone=True),
        comment="When it was disabled: submits may not name it, its deliveries wait.",
    ),
    Column("disabled_reason", Text, comment="Why it was disabled (by hand, or exhaustion)."),
    Column(
        "exhausted_in_a_row",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Deliveries exhausted since the last one delivered; at "
        "webhooks.disable_after_exhausted the endpoint is disabled.",
    ),
    CheckConstraint("name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'", name="name_form"),
    CheckConstraint("url ~ '^https?://'", name="url_scheme"),
    CheckConstraint(
        f"cardinality(events) > 0 AND events <@ ARRAY[{_job_events_sql}]", name="events_known"
    ),
    CheckConstraint(
        "(previous_secret_sealed IS NULL) = (previous_secret_expires_at IS NULL)",
        name="previous_secret_expires",
    ),
    CheckConstraint("exhausted_in_a_row >= 0", name="exhausted_nonnegative"),
    comment="Webhook endpoints: where finished jobs are announced, signed Standard Webhooks.",
)

async_webhook_deliveries = Table(
    "async_webhook_deliveries",
    metadata,
    Column(
        "id",
        UUID(as_uuid=True),
        primary_key=True,
        comment="Delivery id; sent as webhook-id (msg_<hex>) on every attempt.",
    ),
    Column(
        "endpoint_id",
        BigInteger,
        ForeignKey("async_webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
        comment="Endpoint the event goes to.",
    ),
    Column(
        "job_id",
        UUID(as_uuid=True),
        comment="Job the event is about (no foreign key: the delivery outlives its job's TTL); "
        "NULL for a test event.",
    ),
    Column(
        "event",
        Text,
        nullable=False,
        comment="async_job.completed/failed/cancelled, or webhook.test.",
    ),
    Column(
        "request_type",
        Text,
        comment="Kind of the job, copied at its terminal write (the job may be swept first).",
    ),
    Column("job_status", Text, comment="Terminal status of the job, copied at its write."),
    Column("job_status_code", SmallInteger, comment="status_code of the job, copied likewise."),
    Column(
        "payload",
        Text,
        comment="The JSON body, fixed at the first attempt so every retry sends the same bytes.",
    ),
    Column(
        "state",
        Text,
        nullable=False,
        server_default=text("'pending'"),
        comment="pending -> delivering -> delivered | failed | exhausted, or back to pending "
        "for a retry; redeliver sends a finished delivery back to pending.",
    ),
    Column(
        "attempts",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Attempts started (claims).",
    ),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("now()"),
        comment="When the event happened (the job's terminal write).",
    ),
    Column(
        "next_attempt_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("now()"),
        comment="When it is due; while delivering, when its worker's lease lapses.",
    ),
    Column(
        "first_attempt_at",
        DateTime(timezone=True),
        comment="Start of the retry window (webhooks.retry_for_seconds).",
    ),
    Column("lease_owner", Text, comment="Worker holding the delivery while it is delivering."),
    Column(
        "finished_at",
        DateTime(timezone=True),
        comment="When it was delivered, failed or exhausted; NULL while it may still go out.",
    ),
    Column("last_status_code", SmallInteger, comment="HTTP status of the last attempt, if any."),
    Column("last_error", Text, comment="Short reason of the last failed attempt."),
    Column("traceparent", Text, comment="The job's traceparent, sent on every attempt."),
    Column("tracestate", Text, comment="The job's tracestate, sent beside traceparent."),
    CheckConstraint(f"event IN ({_events_sql})", name="event"),
    CheckConstraint(f"state IN ({_delivery_states_sql})", name="state"),
    CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
    CheckConstraint(
        "(state IN ('delivered', 'failed', 'exhausted')) = (finished_at IS NOT NULL)",
        name="finished_has_time",
    ),
    CheckConstraint(
        "(state = 'delivering') = (lease_owner IS NOT NULL)", name="delivering_has_lease"
    ),
    CheckConstraint("(event = 'webhook.test') = (job_id IS NULL)", name="job_event_has_job"),
    Index(
        "async_webhook_deliveries_endpoint_id_idx",
        "endpoint_id",
        "next_attempt_at",
        postgresql_where=text("finished_at IS NULL"),
    ),
    Index(
        "async_webhook_deliveries_delivering_idx",
        "endpoint_id",
        postgresql_where=text("state = 'delivering'"),
    ),
    Index("async_webhook_deliveries_created_at_idx", "created_at"),
    Index("async_webhook_deliveries_job_id_idx", "job_id"),
    comment="Webhook deliveries: one per event and endpoint, written with the job's terminal "
    "state, retried until delivered or exhausted; swept after webhooks.retention_days.",
)

async_webhook_attempts = Table(
    "async_webhook_attempts",
    metadata,
    Column(
        "delivery_id",
        UUID(as_uuid=True),
        ForeignKey("async_webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
        comment="Delivery the attempt belongs to; deleted with it.",
    ),
    Column("attempt", Integer, nullable=False, comment="1 for the first attempt, then 2, 3..."),
    Column(
        "attempted_at",
        DateTime(timezone=True),
        nullable=False,
        comment="When the request was sent.",
    ),
    Column("status_code", SmallInteger, comment="HTTP status answered; NULL: no answer."),
    Column(
        "latency_ms",
        Integer,
        nullable=False,
        comment="Milliseconds until the answer or the failure.",
    ),
    Column(
        "outcome",
        Text,
        nullable=False,
        comment="delivered, retry (another attempt follows), failed (permanent) or exhausted.",
    ),
    Column("error", Text, comment="Short reason of a failed attempt (at most 300 characters)."),
    PrimaryKeyConstraint("delivery_id", "attempt"),
    CheckConstraint(f"outcome IN ({_outcomes_sql})", name="outcome"),
    CheckConstraint("char_length(error) <= 300", name="error_length"),
    CheckConstraint("latency_ms >= 0", name="latency_nonnegative"),
    comment="Every attempt of every webhook delivery: the delivery log DBAs read.",
)
