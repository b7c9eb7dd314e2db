"""GET /metrics, and the middleware that counts every HTTP request by its operation id."""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asyncgate.handlers.context import services
from asyncgate.metrics import CONTENT_TYPE, Metrics, QueueSnapshot
from asyncgate.status import JobStatus


async def getMetrics() -> Response:
    svc = services()

    async def read_queue() -> QueueSnapshot:
        pending, processing, oldest = await svc.jobs.queue_depth()
        by_status = {JobStatus.PENDING.value: pending, JobStatus.PROCESSING.value: processing}
        return QueueSnapshot(by_status, oldest)

    return Response(await svc.metrics.exposition(read_queue), media_type=CONTENT_TYPE)


class RequestMetricsMiddleware:
    """Counts each answered request and its duration, labelled with the spec's operation id
    (``unmatched`` for paths outside the spec) and the status sent."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        """The labelled counter and histogram per operation id and status, looked up once
        (``labels()`` takes a lock and builds its key on every call); bounded by the spec's
        operations times the statuses they answer."""

    def _count(self, operation: str, status: int, seconds: float) -> None:
        children = self._children.get((operation, status))
        if children is None:
            metrics = self.metrics
            children = (
                metrics.http_requests.labels(operation, str(status)),
                metrics.http_seconds.labels(operation),
            )
            self._children[(operation, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        # Connexion's routing writes the operation id into this dict; inner layers copy the
        # scope, but a copy shares it.
        extensions = scope.setdefault("extensions", {})

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            routing = extensions.get("connexion_routing") or {}
            operation = routing.get("operation_id") or "unmatched"
            self._count(operation, status, time.monotonic() - started)
