"""JSON bodies of job answers and errors, serialised with orjson; stored results pass through."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

import orjson
from starlette.responses import Response

from asyncgate.errors import error_body
from asyncgate.kinds import KINDS, Kind
from asyncgate.models.jobs import JobView
from asyncgate.status import JobStatus

JSON = "application/json"


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a Z suffix."""
    return value.isoformat().replace("+00:00", "Z")


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)


def json_response(body: Any, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, headers=headers, media_type=JSON)


def location(kind: Kind, job_id: uuid.UUID) -> str:
    """The poll URL of a job."""
    return f"{KINDS[kind].path}/{job_id}"


def accepted(
    kind: Kind,
    job_id: uuid.UUID,
    created_at: datetime,
    *,
    replayed: bool = False,
    headers: dict[str, str] | None = None,
) -> Response:
    """202 with the job envelope as first answered; a replay for an Idempotency-Key says so, and
    ``headers`` are added to its ``Location``."""
    body = {"id": str(job_id), "status": JobStatus.PENDING, "created_at": timestamp(created_at)}
    extra = {"Idempotent-Replayed": "true"} if replayed else {}
    return json_response(
        body, 202, {"Location": location(kind, job_id), **extra, **(headers or {})}
    )


def job(view: JobView, retry_after: int, headers: dict[str, str] | None = None) -> Response:
    """200 with the outcome for a terminal job; 202 with ``Retry-After`` for an unfinished one;
    ``headers`` are added to either."""
    extra = headers or {}
    body: dict[str, Any] = {
        "id": str(view.id),
        "status": view.status,
        "created_at": timestamp(view.created_at),
    }
    if not view.status.terminal:
        return json_response(body, 202, {"Retry-After": str(retry_after), **extra})
    if view.completed_at is not None:
        body["completed_at"] = timestamp(view.completed_at)
    if view.expires_at is not None:
        body["expires_at"] = timestamp(view.expires_at)
    if view.status_code is not None:
        body["status_code"] = view.status_code
    if view.result_bytes is not None:
        body["result"] = {
            "audio": base64.b64encode(view.result_bytes).decode(),
            "content_type": view.result_content_type or "application/octet-stream",
        }
    elif view.result_json is not None:
        body["result"] = orjson.Fragment(view.result_json)
    if view.error is not None:
        body["error"] = view.error
    return json_response(body, 200, extra or None)


def error(
    status_code: int,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A BifrostError answer (see :func:`asyncgate.errors.error_body`)."""
    return json_response(error_body(status_code, message, param=param), status_code, headers)
