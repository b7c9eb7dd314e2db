"""GET /v1/async/jobs: the caller's jobs, newest first, a page at a time behind an opaque cursor."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response

from asyncgate.errors import BadRequest, Unauthorized
from asyncgate.handlers import render
from asyncgate.handlers.auth import resolve_key
from asyncgate.handlers.context import headers, services
from asyncgate.kinds import KINDS, Kind
from asyncgate.models.jobs import JobSummary
from asyncgate.status import JobStatus

LIST_PATH = "/v1/async/jobs"
"""The one job path not of a kind: the list of the caller's jobs of every kind."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

ANONYMOUS = "listing jobs needs a virtual key; a job submitted without one is public by its id only"
BAD_CURSOR = "after is not a cursor this gateway gave out; pass next_after unchanged"


def encode_cursor(job: JobSummary) -> str:
    """The cursor after ``job``: its created_at (microseconds, exact) and id, URL-safe."""
    micros = (job.created_at - _EPOCH) // _MICROSECOND
    raw = f"{micros}.{job.id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor stands for; BadRequest for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        micros, _, job_id = raw.partition(".")
        if not micros.isdigit():
            raise ValueError(raw)
        return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=job_id)
    except (ValueError, binascii.Error, OverflowError, UnicodeDecodeError):
        raise BadRequest(BAD_CURSOR, param="after") from None


def _item(job: JobSummary) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": str(job.id),
        "request_type": job.kind.value,
        "status": job.status.value,
        "created_at": render.timestamp(job.created_at),
    }
    if job.completed_at is not None:
        item["completed_at"] = render.timestamp(job.completed_at)
    if job.expires_at is not None:
        item["expires_at"] = render.timestamp(job.expires_at)
    if job.status_code is not None:
        item["status_code"] = job.status_code
    item["url"] = f"{KINDS[job.kind].path}/{job.id}"
    return item


async def listAsyncJobs(
    kind: str | None = None,
    status: str | None = None,
    limit: int = 20,
    after: str | None = None,
) -> Response:
    """A page of the caller's jobs (every job for an admin key); 401 for anonymous callers."""
    svc = services()
    identity = await resolve_key(svc, headers(), Unauthorized("invalid virtual key"))
    if identity is None:
        raise Unauthorized(ANONYMOUS)
    cursor = None if after is None else decode_cursor(after)
    page = await svc.jobs.list_jobs(
        owner=None if identity.is_admin else identity.id,
        kind=None if kind is None else Kind(kind),
        status=None if status is None else JobStatus(status),
        limit=limit + 1,
        after=cursor,
    )
    has_more = len(page) > limit
    page = page[:limit]
    body: dict[str, Any] = {
        "object": "list",
        "data": [_item(j) for j in page],
        "has_more": has_more,
    }
    if has_more:
        body["next_after"] = encode_cursor(page[-1])
    return render.json_response(body, 200)
