"""Calls to OpenAI-compatible upstreams over one shared aiohttp session.

:meth:`Upstream.send` returns an :class:`UpstreamReply` for a usable answer and raises
:class:`UpstreamError` for anything else, marked ``transient`` when a retry may help
(connection failures, timeouts, 429 and 5xx gateway statuses), with the upstream's
``Retry-After`` when it gave one.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from asyncgate.config import ProviderConfig
from asyncgate.kinds import KINDS, Kind, Result
from asyncgate.models.jobs import NewFile
from asyncgate.trace import TraceContext

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
GATEWAY_ONLY_FIELDS = ("fallbacks", "stream")
JOB_ID_HEADER = "X-Asyncgate-Job-Id"
TEXT_TRANSCRIPT_TYPES = ("text/plain", "text/vtt", "application/x-subrip", "text/srt")


@dataclass(slots=True)
class UpstreamReply:
    """A successful answer: JSON ``result``, or raw ``body`` with its ``content_type`` (audio)."""

    status_code: int
    result: Any = None
    body: bytes | None = None
    content_type: str | None = None


class UpstreamError(Exception):
    """An upstream call that produced no usable answer.

    ``status_code`` is the upstream's status, or 502/504 when the failure happened on the way
    (connection, timeout, unreadable answer). ``error`` holds ``type``, ``code``, ``message``
    and ``param`` as the upstream sent them, when it did.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str = "upstream_error",
        code: str | None = None,
        param: str | None = None,
        transient: bool = False,
        retry_after: float | None = None,
        from_upstream: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.code = code
        self.param = param
        self.transient = transient
        self.retry_after = retry_after
        self.from_upstream = from_upstream


def upstream_body(request: Mapping[str, Any], bare_model: str) -> dict[str, Any]:
    """The request as the upstream should see it: bare model name, gateway-only fields removed."""
    body = {k: v for k, v in request.items() if k not in GATEWAY_ONLY_FIELDS}
    body["model"] = bare_model
    return body


class Upstream:
    """Sends jobs to providers; the session is created and closed by the composition root."""

    def __init__(self, session: aiohttp.ClientSession, *, max_response_bytes: int) -> None:
        self.session = session
        self.max_response_bytes = max_response_bytes

    async def send(
        self,
        provider: ProviderConfig,
        kind: Kind,
        body: dict[str, Any],
        files: list[NewFile],
        job_id: uuid.UUID,
        *,
        trace: TraceContext | None = None,
    ) -> UpstreamReply:
        """One request to ``provider``; with ``trace``, sent as a new span of that trace."""
        info = KINDS[kind]
        headers = {JOB_ID_HEADER: str(job_id)}
        if trace is not None:
            headers |= trace.child_headers()
        if provider.api_key is not None:
            headers["Authorization"] = f"Bearer {provider.api_key.reveal()}"
        data: aiohttp.FormData | bytes
        if info.multipart:
            try:
                data = _form(body, files)
            except ValueError as exc:
                # aiohttp refuses some form fields, e.g. a name with control characters in it.
                raise UpstreamError(
                    f"the request cannot be sent upstream: {exc}",
                    status_code=400,
                    error_type="invalid_request_error",
                ) from exc
        else:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=provider.timeout)
        try:
            async with self.session.post(
                provider.base_url + info.upstream_path, data=data, headers=headers, timeout=timeout
            ) as response:
                raw = await self._read(response)
                return self._interpret(kind, response, raw)
        except TimeoutError as exc:
            raise UpstreamError(
                f"upstream did not answer within {provider.timeout:g}s",
                status_code=504,
                error_type="upstream_timeout",
                transient=True,
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"upstream connection failed: {exc.__class__.__name__}: {exc}".rstrip(": "),
                status_code=502,
                error_type="upstream_connection_error",
                transient=True,
            ) from exc

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self.max_response_bytes:
            raise _too_large(self.max_response_bytes)
        chunks = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise _too_large(self.max_response_bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _interpret(kind: Kind, response: aiohttp.ClientResponse, raw: bytes) -> UpstreamReply:
        status = response.status
        content_type = response.content_type
        if status >= 400:
            raise _status_error(status, raw, response.headers.get("Retry-After"))
        result = KINDS[kind].result
        if result is Result.AUDIO and not content_type.endswith("json"):
            if not (
                content_type.startswith("audio/") or content_type == "application/octet-stream"
            ):
                raise UpstreamError(
                    f"upstream answered with content type {content_type!r}, expected audio",
                    status_code=502,
                    error_type="upstream_invalid_response",
                )
            return UpstreamReply(status, body=raw, content_type=content_type)
        if result is Result.TRANSCRIPT and content_type in TEXT_TRANSCRIPT_TYPES:
            return UpstreamReply(status, result={"text": raw.decode("utf-8", "replace")})
        if not content_type.endswith("json"):
            raise UpstreamError(
                f"upstream answered with content type {content_type!r}, expected JSON",
                status_code=502,
                error_type="upstream_invalid_response",
            )
        try:
            return UpstreamReply(status, result=orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"upstream answered with invalid JSON: {exc}",
                status_code=502,
                error_type="upstream_invalid_response",
            ) from exc


def _form(body: dict[str, Any], files: list[NewFile]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in body.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif not isinstance(item, str):
                item = orjson.dumps(item).decode() if isinstance(item, dict) else str(item)
            form.add_field(name, item)
    counts = Counter(f.field for f in files)
    for f in files:
        # Several images travel as ``image[]``, the OpenAI name for a list of files.
        name = "image[]" if f.field == "image" and counts["image"] > 1 else f.field
        form.add_field(
            name,
            f.data,
            filename=f.filename or "upload",
            content_type=f.content_type or "application/octet-stream",
        )
    return form


def _too_large(limit: int) -> UpstreamError:
    return UpstreamError(
        f"upstream answer exceeds the {limit} byte limit",
        status_code=502,
        error_type="upstream_response_too_large",
    )


def _status_error(status: int, raw: bytes, retry_after_header: str | None) -> UpstreamError:
    error: dict[str, Any] = {}
    try:
        parsed = orjson.loads(raw)
        if isinstance(parsed, dict):
            candidate = parsed.get("error", parsed)
            error = candidate if isinstance(candidate, dict) else {"message": str(candidate)}
    except orjson.JSONDecodeError:
        pass
    message = error.get("message") or raw[:500].decode("utf-8", "replace") or f"HTTP {status}"
    code = error.get("code")
    return UpstreamError(
        str(message),
        status_code=status,
        error_type=str(error.get("type") or "upstream_error"),
        code=None if code is None else str(code),
        param=None if error.get("param") is None else str(error.get("param")),
        transient=status in TRANSIENT_STATUSES,
        retry_after=retry_after_seconds(retry_after_header),
        from_upstream=True,
    )


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's delay in seconds; None when missing or not a number."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
