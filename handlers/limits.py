"""Request size limits, enforced while the body streams in, before anything parses it.

A body sent without ``Content-Length`` (chunked, as Go clients and streaming SDKs do) is read
here, within the limit, and handed on with its length set: the validators downstream only look
for a body when a length is declared.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asyncgate.config import LimitsConfig
from asyncgate.errors import PayloadTooLarge

_NO_BODY_METHODS = ("GET", "HEAD", "OPTIONS", "DELETE")


class BodyLimitMiddleware:
    """413 for JSON bodies over ``max_json_bytes`` and uploads over ``max_upload_bytes``."""

    def __init__(self, app: ASGIApp, limits: LimitsConfig) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY_METHODS:
            await self.app(scope, receive, send)
            return
        content_type = b""
        content_length: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"content-length" and value.isdigit():
                content_length = int(value)
        multipart = content_type.startswith(b"multipart/")
        limit = self.limits.max_upload_bytes if multipart else self.limits.max_json_bytes
        what = "upload" if multipart else "request body"
        if content_length is not None and content_length > limit:
            raise PayloadTooLarge(
                f"{what} of {content_length} bytes exceeds the {limit} byte limit"
            )
        if content_length is None:
            body = await _read_all(receive, limit, what)
            await self.app(_with_length(scope, len(body)), _replay(body, receive), send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"{what} exceeds the {limit} byte limit")
            return message

        await self.app(scope, limited_receive, send)


async def _read_all(receive: Receive, limit: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client went away; downstream sees what arrived
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} exceeds the {limit} byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != b"transfer-encoding"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
