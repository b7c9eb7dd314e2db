"""GET /health: 200 when PostgreSQL answers, 503 when it does not."""

from __future__ import annotations

from starlette.responses import Response

from handlers import render
from handlers.context import services


async def getHealth() -> Response:
    if await services().db.ping():
        return render.json_response({"status": "ok", "database": "ok"}, 200)
    return render.error(503, "the job database is unavailable", error_type="service_unavailable")
