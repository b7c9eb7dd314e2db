"""Turning an accepted request into a :class:`models.jobs.NewJob`: the rules the spec can't say."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.datastructures import UploadFile

from asyncgate import local
from asyncgate.config import JobsConfig, LimitsConfig, ProviderConfig
from asyncgate.errors import BadRequest, PayloadTooLarge
from asyncgate.ids import new_job_id
from asyncgate.kinds import KINDS, Kind
from asyncgate.models.jobs import Committed, NewFile, NewJob
from asyncgate.routing import candidate_models, check_models, split_model
from asyncgate.services import Services
from asyncgate.trace import TraceContext, log_fields

TTL_HEADER = "x-bf-async-job-result-ttl"
TIMEOUT_HEADER = "x-bf-async-timeout"
IDEMPOTENCY_HEADER = "idempotency-key"
WEBHOOK_HEADER = "x-bf-async-webhook"
REPLAYED_HEADER = "Idempotent-Replayed"

log = logging.getLogger("asyncgate.jobs")


def request_hash(kind: Kind, body: Mapping[str, Any], files: list[NewFile]) -> bytes:
    """SHA-256 of a canonical form of the request: kind, body with sorted keys, and each file's
    field, name, type and contents' digest, in upload order. Key order and whitespace of the
    body do not change it; anything else does."""
    canonical = [
        kind.value,
        body,
        [[f.field, f.filename, f.content_type, hashlib.sha256(f.data).hexdigest()] for f in files],
    ]
    try:
        text = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers wider than 64 bits, which JSON allows and orjson refuses
        text = json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(text).digest()


def _positive_seconds(raw: str | None, most: int) -> int | None:
    """The header's positive ASCII-digit integer, at most ``most``; None for anything else."""
    if raw is None:
        return None
    digits = raw.strip(" \t")
    if not (digits.isascii() and digits.isdigit()):
        return None
    if len(digits) > len(str(most)):
        return most
    value = int(digits)
    return min(value, most) if value > 0 else None


def parse_timeout(raw: str | None, config: JobsConfig) -> int | None:
    """Seconds from submission within which the job must end (``x-bf-async-timeout``), clamped
    to ``jobs.max_timeout_seconds``; None (no deadline of its own) when missing or invalid."""
    return _positive_seconds(raw, config.max_timeout_seconds)


def parse_ttl(raw: str | None, config: JobsConfig) -> int:
    """Seconds to keep the result: the header's positive integer, clamped to the maximum.

    Only ASCII digits count; anything else (missing, signed, ``1_000``, zero) means the default.
    """
    ttl = _positive_seconds(raw, config.max_ttl)
    return config.default_ttl if ttl is None else ttl


def reject_streaming(kind: Kind, body: Mapping[str, Any]) -> None:
    for rule in KINDS[kind].streaming:
        if body.get(rule.field) in rule.values:
            raise BadRequest(rule.message, param=rule.field)


async def read_files(uploads: Mapping[str, Any], limits: LimitsConfig) -> list[NewFile]:
    """The uploaded files, in order, each under the form field it came in."""
    files: list[tuple[str, UploadFile]] = []
    for name, value in uploads.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, UploadFile):
                files.append((name, item))
    if len(files) > limits.max_files:
        raise PayloadTooLarge(f"too many files: {len(files)} (at most {limits.max_files})")
    return [
        NewFile(name, upload.filename, upload.content_type, await upload.read())
        for name, upload in files
    ]


async def close_uploads(uploads: Mapping[str, Any]) -> None:
    """Close every upload; their bytes, when needed, were copied by :func:`read_files`."""
    for value in uploads.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, UploadFile):
                await item.close()


def _holds_nul(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (keys included) holds U+0000, which PostgreSQL's
    jsonb cannot store."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


async def submit_job(
    svc: Services,
    kind: Kind,
    body: Any,
    files: list[NewFile],
    *,
    owner_key_id: int | None,
    headers: Mapping[str, str],
    body_text: bytes | None = None,
) -> Committed:
    """Build the job for an accepted request (see :func:`build_job`), commit it, and count
    and log it unless it replays an earlier job of the same Idempotency-Key."""
    job = build_job(
        kind,
        body,
        files,
        owner_key_id=owner_key_id,
        headers=headers,
        jobs=svc.settings.jobs,
        providers=svc.settings.providers,
        body_text=body_text,
    )
    job.webhook_endpoint_id = await resolve_webhook(svc, headers, owner_key_id)
    committed = await svc.committer.submit(job)
    if committed.replayed:
        log.info("job %s kind=%s replayed for its Idempotency-Key", committed.id, kind.value)
        return committed
    svc.metrics.jobs_submitted.labels(kind.value, job.provider).inc()
    trace, extra = log_fields(job.trace)
    log.info(
        "job %s kind=%s provider=%s pending%s",
        job.id,
        kind.value,
        job.provider,
        trace,
        extra=extra,
    )
    return committed


async def resolve_webhook(
    svc: Services, headers: Mapping[str, str], owner_key_id: int | None
) -> int | None:
    """The id of the endpoint ``x-bf-async-webhook`` names, None without the header.

    Raises BadRequest for an endpoint that does not exist, is disabled, or belongs to another
    key (said as "no such endpoint": a key does not learn of others' endpoints)."""
    name = headers.get(WEBHOOK_HEADER)
    if name is None:
        return None
    name = name.strip()
    ref = await svc.webhooks.resolve(name)
    if ref is None or ref.owner_key_id not in (None, owner_key_id):
        raise BadRequest(
            f"no webhook endpoint named {name!r} is available to this request",
            param=WEBHOOK_HEADER,
        )
    if ref.disabled:
        raise BadRequest(
            f"the webhook endpoint {name!r} is disabled; enable it or name another",
            param=WEBHOOK_HEADER,
        )
    return ref.id


def check_local_models(
    kind: Kind, body: Mapping[str, Any], providers: Mapping[str, ProviderConfig]
) -> None:
    """Raise BadRequest when the model or a fallback names a local provider's model that cannot
    run this request (see :mod:`asyncgate.local`)."""
    for index, name in enumerate(candidate_models(body)):
        parsed = split_model(name)
        if parsed is None or not providers[parsed[0]].local:
            continue
        refused = local.refusal(kind, parsed[1], body)
        if refused is not None:
            message, param = refused
            if index:
                message = f"fallback {name!r}: {message}"
            raise BadRequest(message, param="fallbacks" if index else param)


def build_job(
    kind: Kind,
    body: Any,
    files: list[NewFile],
    *,
    owner_key_id: int | None,
    headers: Mapping[str, str],
    jobs: JobsConfig,
    providers: Mapping[str, ProviderConfig],
    body_text: bytes | None = None,
) -> NewJob:
    """The job for an accepted request, or BadRequest for what the spec cannot refuse.

    ``headers`` give its TTL, deadline, Idempotency-Key and trace context; ``body_text``,
    when given, is ``body`` as the JSON it was parsed from, stored as it is."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    reject_streaming(kind, body)
    if _holds_nul(body):
        raise BadRequest(
            "the request contains a NUL character (\\u0000), which the job store cannot keep; "
            "remove it"
        )
    required = KINDS[kind].required_files
    if required and not any(f.field in required for f in files):
        raise BadRequest(f"a file upload named {required[0]!r} is required", param=required[0])
    provider = check_models(body, providers)
    check_local_models(kind, body, providers)
    idempotency_key = headers.get(IDEMPOTENCY_HEADER)
    return NewJob(
        id=new_job_id(),
        kind=kind,
        owner_key_id=owner_key_id,
        provider=provider,
        model=str(body["model"]),
        request=body,
        request_json=body_text,
        ttl_seconds=parse_ttl(headers.get(TTL_HEADER), jobs),
        files=files,
        idempotency_key=idempotency_key,
        timeout_seconds=parse_timeout(headers.get(TIMEOUT_HEADER), jobs),
        request_hash=None if idempotency_key is None else request_hash(kind, body, files),
        trace=TraceContext.from_headers(headers),
    )
