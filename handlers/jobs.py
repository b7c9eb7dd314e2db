"""Submit and poll for every kind: one generic handler each, made per kind from the kinds table
and bound to the kind's operationIds by :mod:`asyncgate.handlers.operations`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from asyncgate.errors import JOB_NOT_FOUND, BadRequest, NotFound
from asyncgate.handlers import render
from asyncgate.handlers.auth import resolve_owner
from asyncgate.handlers.context import headers, services
from asyncgate.handlers.submission import (
    IDEMPOTENCY_HEADER,
    TTL_HEADER,
    build_job,
    close_uploads,
    parse_ttl,
    read_files,
)
from asyncgate.kinds import KINDS, Kind

Handler = Callable[..., Awaitable[Response]]

log = logging.getLogger("asyncgate.jobs")


def submit_handler(kind: Kind) -> Handler:
    """POST: validate what the spec cannot, commit the job, answer 202 with its id."""

    async def submit(body: Any = None, **uploads: Any) -> Response:
        svc = services()
        request_headers = headers()
        try:
            owner = await resolve_owner(svc, request_headers, BadRequest("invalid virtual key"))
            files = await read_files(uploads, svc.settings.limits)
        finally:
            await close_uploads(uploads)
        job = build_job(
            kind,
            body,
            files,
            owner_key_id=owner,
            ttl_seconds=parse_ttl(request_headers.get(TTL_HEADER), svc.settings.jobs),
            providers=svc.settings.providers,
            idempotency_key=request_headers.get(IDEMPOTENCY_HEADER),
        )
        committed = await svc.committer.submit(job)
        if committed.replayed:
            log.info("job %s kind=%s replayed for its Idempotency-Key", committed.id, kind.value)
        else:
            log.info("job %s kind=%s provider=%s pending", job.id, kind.value, job.provider)
        return render.accepted(kind, committed.id, committed.created_at, committed.replayed)

    submit.__name__ = KINDS[kind].submit_operation
    return submit


def poll_handler(kind: Kind) -> Handler:
    """GET: the job if the caller may see it, else 404 with one message for every reason."""

    async def poll(job_id: str) -> Response:
        svc = services()
        owner = await resolve_owner(svc, headers(), NotFound(JOB_NOT_FOUND))
        try:
            parsed = uuid.UUID(job_id)
        except ValueError:
            raise NotFound(JOB_NOT_FOUND) from None
        view = await svc.jobs.get(parsed, kind, owner)
        if view is None:
            raise NotFound(JOB_NOT_FOUND)
        return render.job(view, svc.settings.jobs.retry_after)

    poll.__name__ = KINDS[kind].poll_operation
    return poll
