"""Submit, poll and cancel for every kind: one generic handler each, made per kind from the kinds
table and bound to the kind's operationIds by :mod:`asyncgate.handlers.operations`.

A poll or submit carrying ``Prefer: wait=N`` is held until the job is terminal or ``N`` seconds
(at most ``jobs.max_wait_seconds``) pass, then answered as a poll would be, with
``Preference-Applied: wait=N``. A client that goes away while held stops the wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive

from asyncgate.errors import JOB_NOT_FOUND, BadRequest, Conflict, NotFound, cancelled_error
from asyncgate.handlers import render
from asyncgate.handlers.auth import resolve_owner
from asyncgate.handlers.context import (
    current_receive,
    disconnected,
    headers,
    json_text,
    services,
)
from asyncgate.handlers.hold import defer
from asyncgate.handlers.prefer import APPLIED_HEADER, PREFER_HEADER, applied_wait
from asyncgate.handlers.submission import (
    close_uploads,
    read_files,
    submit_job,
)
from asyncgate.kinds import KINDS, Kind
from asyncgate.models.jobs import JobView
from asyncgate.services import Services
from asyncgate.status import JobStatus

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
        committed = await submit_job(
            svc,
            kind,
            body,
            files,
            owner_key_id=owner,
            headers=request_headers,
            body_text=json_text(),
        )
        wait = _wait(svc, request_headers)
        if wait is None:
            return render.accepted(
                kind, committed.id, committed.created_at, replayed=committed.replayed
            )
        retry_after = svc.settings.jobs.retry_after
        extra = {"Location": render.location(kind, committed.id), APPLIED_HEADER: f"wait={wait}"}
        now = {APPLIED_HEADER: f"wait={wait}", "Retry-After": str(retry_after)}
        first = render.accepted(
            kind, committed.id, committed.created_at, replayed=committed.replayed, headers=now
        )
        return await _hold(svc, kind, committed.id, owner, wait, extra, first, missing=first)

    submit.__name__ = KINDS[kind].submit_operation
    return submit


def poll_handler(kind: Kind) -> Handler:
    """GET: the job if the caller may see it, else 404 with one message for every reason."""

    async def poll(job_id: str) -> Response:
        svc = services()
        request_headers = headers()
        owner = await resolve_owner(svc, request_headers, NotFound(JOB_NOT_FOUND))
        parsed = _job_id(job_id)
        view = await svc.jobs.get(parsed, kind, owner)
        if view is None:
            raise NotFound(JOB_NOT_FOUND)
        wait = _wait(svc, request_headers)
        if wait is None:
            return render.job(view, svc.settings.jobs.retry_after)
        extra = {APPLIED_HEADER: f"wait={wait}"}
        first = render.job(view, svc.settings.jobs.retry_after, extra)
        if view.status.terminal:
            return first
        missing = render.error(404, JOB_NOT_FOUND)
        return await _hold(svc, kind, parsed, owner, wait, extra, first, missing=missing)

    poll.__name__ = KINDS[kind].poll_operation
    return poll


def cancel_handler(kind: Kind) -> Handler:
    """POST .../cancel: an unfinished job becomes ``cancelled`` (its worker stops at once); a
    cancelled one is answered again; a completed or failed one is a 409 naming its state."""

    async def cancel(job_id: str) -> Response:
        svc = services()
        owner = await resolve_owner(svc, headers(), NotFound(JOB_NOT_FOUND))
        view, cancelled_now = await svc.jobs.cancel(_job_id(job_id), kind, owner, cancelled_error())
        if view is None:
            raise NotFound(JOB_NOT_FOUND)
        if cancelled_now:
            log.info("job %s kind=%s cancelled", view.id, kind.value)
        elif view.status is not JobStatus.CANCELLED:
            raise Conflict(
                f"the job is already {view.status.value} and can no longer be cancelled; "
                f"poll {render.location(kind, view.id)} for its outcome"
            )
        return render.job(view, svc.settings.jobs.retry_after)

    cancel.__name__ = KINDS[kind].cancel_operation
    return cancel


def _job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(JOB_NOT_FOUND) from None


def _wait(svc: Services, request_headers: Headers) -> int | None:
    return applied_wait(request_headers.getlist(PREFER_HEADER), svc.settings.jobs.max_wait_seconds)


async def _hold(
    svc: Services,
    kind: Kind,
    job_id: uuid.UUID,
    owner: int | None,
    wait: int,
    extra: dict[str, str],
    first: Response,
    *,
    missing: Response,
) -> Response:
    """Answer once the job is terminal or after ``wait`` seconds, as a poll would (``missing``
    if the job is no longer visible then); ``first`` is the answer as it stands now. The waiting
    happens after the framework has returned (:mod:`asyncgate.handlers.hold`) where it can."""

    async def answer(channel: Receive) -> Response:
        view = await waited(svc, kind, job_id, owner, wait, channel)
        if view is None:
            return missing
        return render.job(view, svc.settings.jobs.retry_after, extra)

    if wait <= 0 or defer(answer):
        return first
    return await answer(current_receive())


async def waited(
    svc: Services, kind: Kind, job_id: uuid.UUID, owner: int | None, wait: float, channel: Receive
) -> JobView | None:
    """The job once terminal or after ``wait`` seconds, as a poll reads it; None if the client
    went away first (its waiter is removed at once) or the job is no longer visible."""

    async def read() -> JobView | None:
        return await svc.jobs.get(job_id, kind, owner)

    waiting = asyncio.ensure_future(svc.events.wait_terminal(job_id, read, wait))
    gone = asyncio.ensure_future(disconnected(channel))
    try:
        await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, gone):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    if not waiting.cancelled() and waiting.done():
        return waiting.result()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    return None
