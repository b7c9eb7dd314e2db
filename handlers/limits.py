"""Request size limits, enforced while the body streams in, before anything parses it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asyncgate.config import LimitsConfig
from asyncgate.errors import PayloadTooLarge


class BodyLimitMiddleware:
    """413 for JSON bodies over ``max_json_bytes`` and uploads over ``max_upload_bytes``."""

    def __init__(self, app: ASGIApp, limits: LimitsConfig) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
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
