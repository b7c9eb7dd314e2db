"""Turning an accepted request into a :class:`models.jobs.NewJob`: the rules the spec can't say."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from asyncgate.models.jobs import NewFile, NewJob
from starlette.datastructures import UploadFile

from asyncgate.config import JobsConfig, LimitsConfig
from asyncgate.errors import BadRequest, PayloadTooLarge
from asyncgate.kinds import Kind
from asyncgate.routing import check_models

TTL_HEADER = "x-bf-async-job-result-ttl"
_TRUE = (True, "true", "True", "1")
# The spec declares these parts binary, but a plain text part of the same name passes it.
# Connexion hands ``image[]`` parts over as ``image``.
_REQUIRED_FILES = {
    Kind.TRANSCRIPTION: ("file",),
    Kind.IMAGE_EDIT: ("image", "image[]"),
    Kind.IMAGE_VARIATION: ("image",),
}


def parse_ttl(raw: str | None, config: JobsConfig) -> int:
    """Seconds to keep the result: the header's positive integer, clamped to the maximum;
    anything missing, non-numeric, zero or negative means the default."""
    if raw is None:
        return config.default_ttl
    try:
        ttl = int(raw.strip())
    except ValueError:
        return config.default_ttl
    if ttl <= 0:
        return config.default_ttl
    return min(ttl, config.max_ttl)


def reject_streaming(kind: Kind, body: Mapping[str, Any]) -> None:
    if body.get("stream") in _TRUE:
        raise BadRequest(
            "streaming is not supported for async requests; omit stream", param="stream"
        )
    if kind is Kind.SPEECH and body.get("stream_format") == "sse":
        raise BadRequest(
            "stream_format 'sse' is not supported for async requests; use 'audio'",
            param="stream_format",
        )


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


def build_job(
    kind: Kind,
    body: Any,
    files: list[NewFile],
    *,
    owner_key_id: int | None,
    ttl_seconds: int,
    providers: Mapping[str, object],
) -> NewJob:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    reject_streaming(kind, body)
    required = _REQUIRED_FILES.get(kind)
    if required is not None and not any(f.field in required for f in files):
        raise BadRequest(f"a file upload named {required[0]!r} is required", param=required[0])
    provider = check_models(body, providers)
    return NewJob(
        id=uuid.uuid4(),
        kind=kind,
        owner_key_id=owner_key_id,
        provider=provider,
        model=str(body["model"]),
        request=body,
        ttl_seconds=ttl_seconds,
        files=files,
    )
