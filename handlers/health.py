"""GET /health: 200 when PostgreSQL answers, 503 when it does not."""

from __future__ import annotations

from starlette.responses import Response

from asyncgate.handlers import render
from asyncgate.handlers.context import services


async def getHealth() -> Response:
    if await services().db.ping():
        return render.json_response({"status": "ok", "database": "ok"}, 200)
    return render.error(503, "the job database is unavailable")
