"""The baseline app: the gateway's own spec, validators and middleware, with no database behind.

Every submit operation answers 202 with a fresh job envelope and every poll answers 200 with
one fixed completed chat job, rendered by the gateway's own renderer. What the gateway spends
beyond this app is the cost of actually storing and reading jobs.

Run: ``python -m bench.baseline --port N`` (uvicorn on uvloop with the gateway's own HTTP
protocol, as the gateway runs).
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import uvicorn
from connexion import AsyncApp
from connexion.resolver import Resolver
from starlette.responses import Response

from asyncgate.app import connexion_app
from asyncgate.config import LimitsConfig, Settings
from asyncgate.connections import ConnectionLimits, protocol_factory
from asyncgate.handlers import render
from asyncgate.handlers.operations import operations, resolver
from asyncgate.kinds import KINDS, Kind
from asyncgate.logs import configure
from asyncgate.metrics import Metrics
from asyncgate.models.jobs import JobView
from asyncgate.server import run
from asyncgate.status import JobStatus
from bench.loadgen import chat_request

Handler = Callable[..., Awaitable[Response]]


def completed_job() -> JobView:
    """A completed chat job shaped like the one the fake upstream produces for the bench body."""
    request = chat_request()
    text = request["messages"][-1]["content"]
    words = len(text.split())
    result = {
        "id": "chatcmpl-000000000001",
        "object": "chat.completion",
        "model": "ok",
        "created": 1_700_000_000,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words},
    }
    created = datetime.now(UTC)
    return JobView(
        id=uuid.uuid4(),
        status=JobStatus.COMPLETED,
        created_at=created,
        completed_at=created,
        expires_at=created + timedelta(hours=1),
        status_code=200,
        result_json=orjson.dumps(result).decode(),
        result_bytes=None,
        result_content_type=None,
        error=None,
    )


def _fake_submit(kind: Kind) -> Handler:
    async def submit(body: Any = None, **uploads: Any) -> Response:
        return render.accepted(kind, uuid.uuid4(), datetime.now(UTC))

    return submit


def _fake_poll(view: JobView) -> Handler:
    async def poll(job_id: str) -> Response:
        return render.job(view, 1)

    return poll


async def _health() -> Response:
    return render.json_response({"status": "ok", "database": "ok"}, 200)


async def _list(**_params: object) -> Response:
    return render.json_response({"object": "list", "data": [], "has_more": False}, 200)


def _resolver() -> Resolver:
    """Submits, polls, the list and health bound to fakes of the gateway's handlers (same kind,
    same role); every other operation keeps the gateway's handler, so that the spec binds as it
    does in the gateway (those are not called here)."""
    view = completed_job()
    table: dict[str, Handler] = {**operations(), "getHealth": _health, "listAsyncJobs": _list}
    for kind, info in KINDS.items():
        table[info.submit_operation] = _fake_submit(kind)
        table[info.poll_operation] = _fake_poll(view)
    return resolver(table)


def create_baseline_app() -> AsyncApp:
    """The gateway's app (see :func:`asyncgate.app.connexion_app`) with database-free handlers."""
    return connexion_app(LimitsConfig(), Metrics(), resolver=_resolver())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    configure("WARNING")
    config = uvicorn.Config(
        create_baseline_app(),
        host=args.host,
        port=args.port,
        http=protocol_factory(ConnectionLimits.from_settings(Settings())),
        loop="none",
        lifespan="on",
        access_log=False,
        log_config=None,
    )
    run(uvicorn.Server(config).serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
