"""Header mode: a kind's OpenAI-style routes (``/openai/v1/chat/completions`` and the like),
made per kind from the kinds table and bound by :mod:`asyncgate.handlers.operations`.

The jobs are the kind's ``/v1/async`` jobs, stored the same way and scoped by virtual key the
same way. Without ``x-bf-async`` the call is synchronous but still goes through the queue: it
waits for its job's completion event (no database connection is held meanwhile) and answers the
upstream's status and body; with ``x-bf-async`` it answers the job's id at once; with
``x-bf-async-id`` it answers the job as it stands.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from asyncgate.errors import JOB_NOT_FOUND, BadRequest, NotFound
from asyncgate.handlers import render
from asyncgate.handlers.auth import resolve_owner
from asyncgate.handlers.context import current_receive, headers, json_text, services
from asyncgate.handlers.jobs import waited
from asyncgate.handlers.submission import (
    submit_job,
)
from asyncgate.kinds import Kind
from asyncgate.models.jobs import JobView
from asyncgate.status import JobStatus

Handler = Callable[..., Awaitable[Response]]

ASYNC_HEADER = "x-bf-async"
ASYNC_ID_HEADER = "x-bf-async-id"

_OBJECT: dict[Kind, str] = {
    Kind.TEXT_COMPLETION: "text_completion",
    Kind.CHAT_COMPLETION: "chat.completion",
    Kind.RESPONSE: "response",
    Kind.EMBEDDING: "list",
}
"""The ``object`` an OpenAI answer of each kind carries; a pending job shows it too."""


def header_handler(kind: Kind, operation: str) -> Handler:
    """POST to an OpenAI-style route: retrieve (``x-bf-async-id``), submit and answer the id
    (``x-bf-async``), or submit and wait for the upstream's answer."""

    async def openai(body: Any = None) -> Response:
        svc = services()
        request_headers = headers()
        job_id = request_headers.get(ASYNC_ID_HEADER)
        if job_id:
            owner = await resolve_owner(svc, request_headers, NotFound(JOB_NOT_FOUND))
            view = await svc.jobs.get(_job_id(job_id), kind, owner)
            if view is None:
                raise NotFound(JOB_NOT_FOUND)
            return _answer(view)
        if not body:
            # Connexion hands over an absent optional body as an empty one; a present one
            # has been validated by the spec, which requires its model.
            raise BadRequest(
                f"a request body is required, or header {ASYNC_ID_HEADER} to retrieve a job"
            )
        owner = await resolve_owner(svc, request_headers, BadRequest("invalid virtual key"))
        committed = await submit_job(
            svc,
            kind,
            body,
            [],
            owner_key_id=owner,
            headers=request_headers,
            body_text=json_text(),
        )
        if request_headers.get(ASYNC_HEADER):
            return render.json_response(_pending(kind, committed.id, JobStatus.PENDING), 200)
        wait = svc.settings.jobs.sync_wait_seconds
        view = await waited(svc, kind, committed.id, owner, wait, current_receive())
        if view is None or not view.status.terminal:
            # The job keeps running; its id lets the client fetch the result later.
            return render.error(
                504,
                f"the job did not finish within {wait} seconds; retrieve it with header "
                f"{ASYNC_ID_HEADER}",
                headers={ASYNC_ID_HEADER: str(committed.id)},
            )
        return _answer(view)

    openai.__name__ = operation
    return openai


def _pending(kind: Kind, job_id: uuid.UUID, status: JobStatus) -> dict[str, Any]:
    body: dict[str, Any] = {"id": str(job_id), "object": _OBJECT[kind], "status": status}
    if kind is Kind.RESPONSE:
        body["output"] = []
    return body


def _answer(view: JobView) -> Response:
    """An unfinished job as ``{id, status}``; a finished one as the provider answered it."""
    if not view.status.terminal:
        return render.json_response({"id": str(view.id), "status": view.status}, 200)
    status_code = view.status_code or (200 if view.status is JobStatus.COMPLETED else 500)
    if view.status is JobStatus.COMPLETED and view.result_json is not None:
        return Response(view.result_json, status_code, media_type="application/json")
    if view.error is not None:
        return render.json_response(view.error, status_code)
    return render.json_response({"id": str(view.id), "status": view.status}, status_code)


def _job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(JOB_NOT_FOUND) from None
