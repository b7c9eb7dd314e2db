"""Shared pieces of the functional tests: paths, bodies, error checks, keys, direct store access."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import requests

from asyncgate.config import Settings
from asyncgate.kinds import KINDS, Kind
from asyncgate.models.database import Database
from asyncgate.models.jobs import JobStore
from asyncgate.models.keys import KeyStore
from tests.conftest import UPSTREAM_KEY, Gateway, make_settings, with_database
from tests.spec_check import SpecChecker
from tests.upstream import RecordedRequest, UpstreamThread

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent

TEXT = KINDS[Kind.TEXT_COMPLETION].path
CHAT = KINDS[Kind.CHAT_COMPLETION].path
RESPONSES = KINDS[Kind.RESPONSE].path
EMBEDDINGS = KINDS[Kind.EMBEDDING].path
SPEECH = KINDS[Kind.SPEECH].path
TRANSCRIPTIONS = KINDS[Kind.TRANSCRIPTION].path
IMAGE_GENERATIONS = KINDS[Kind.IMAGE_GENERATION].path
IMAGE_EDITS = KINDS[Kind.IMAGE_EDIT].path
IMAGE_VARIATIONS = KINDS[Kind.IMAGE_VARIATION].path
RERANK = KINDS[Kind.RERANK].path
OCR = KINDS[Kind.OCR].path

JOB_NOT_FOUND = "job not found or expired"


def chat(model: str = "fake/ok", text: str = "hello", **extra: Any) -> dict[str, Any]:
    """A minimal chat completion request."""
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp as the gateway writes it (UTC, ``Z`` suffix)."""
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


def assert_error(response: requests.Response, status: int) -> dict[str, Any]:
    """Check a BifrostError answer with ``status`` and a readable message; return its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    message = body["error"]["message"]
    assert isinstance(message, str) and len(message) >= 8, body
    assert "Traceback" not in message
    assert body.get("status_code", status) == status
    assert body.get("is_bifrost_error", True) is True
    return body


def submit_ok(gateway: Gateway, path: str, **kwargs: Any) -> str:
    """Submit through ``gateway.client`` (JSON via ``json=``, multipart via ``files=``/``data=``)
    and return the new job's id after checking the 202 envelope."""
    response = gateway.client.post(gateway.url + path, **kwargs)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"{path}/{job['id']}"
    return str(job["id"])


def for_job(upstream: UpstreamThread, job_id: str) -> list[RecordedRequest]:
    """The requests the upstream received for one job, in arrival order."""
    return [r for r in upstream.server.requests if r.job_id == job_id]


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from synchronous test code (the gateway has its own loop and thread)."""

    async def main() -> T:
        return await make()

    return asyncio.run(main())


def with_store(database_url: str, action: Callable[[JobStore], Awaitable[T]]) -> T:
    """``action`` on a real JobStore over a fresh pool on ``database_url``."""

    async def main() -> T:
        db = Database(database_url, pool_size=4)
        await db.open()
        try:
            return await action(JobStore(db))
        finally:
            await db.close()

    return asyncio.run(main())


def create_key(database_url: str, name: str, *, admin: bool = False) -> str:
    """A new virtual key made through the real KeyStore; returns the key itself."""

    async def main() -> str:
        db = Database(database_url, pool_size=1)
        await db.open()
        try:
            _, key = await KeyStore(db).create(name, admin=admin)
            return key
        finally:
            await db.close()

    return asyncio.run(main())


def disable_key(database_url: str, name: str) -> bool:
    async def main() -> bool:
        db = Database(database_url, pool_size=1)
        await db.open()
        try:
            return await KeyStore(db).disable(name)
        finally:
            await db.close()

    return asyncio.run(main())


def basic(key: str, user: str = "client") -> str:
    """An ``Authorization`` value carrying ``key`` as the Basic password."""
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


KEY_PLACES: dict[str, Callable[[str], dict[str, str]]] = {
    "bearer": lambda key: {"Authorization": f"Bearer {key}"},
    "basic": lambda key: {"Authorization": basic(key)},
    "x-bf-vk": lambda key: {"x-bf-vk": key},
    "x-api-key": lambda key: {"x-api-key": key},
    "x-goog-api-key": lambda key: {"x-goog-api-key": key},
}


def insert_job(
    database_url: str,
    *,
    kind: Kind = Kind.CHAT_COMPLETION,
    model: str = "fake/ok",
    request: dict[str, Any] | None = None,
    status: str = "pending",
    attempts: int = 0,
    lease_owner: str | None = None,
    lease_expires_in: float | None = None,
    created_seconds_ago: float = 0.0,
    ttl_seconds: int = 3600,
) -> str:
    """A job row written directly, as another (perhaps dead) process would have left it."""
    job_id = uuid.uuid4()
    body = request if request is not None else chat(model)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO async_jobs (id, kind, status, provider, model, request, ttl_seconds,
                                    attempts, lease_owner, lease_expires_at, created_at,
                                    started_at)
            VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s,
                    now() + make_interval(secs => %s),
                    now() - make_interval(secs => %s),
                    CASE WHEN %s > 0 THEN now() END)
            """,
            (
                job_id,
                kind.value,
                status,
                model.split("/", 1)[0],
                model,
                psycopg.types.json.Jsonb(body),
                ttl_seconds,
                attempts,
                lease_owner,
                lease_expires_in,
                created_seconds_ago,
                attempts,
            ),
        )
    return str(job_id)


@contextlib.contextmanager
def shared_gateway(
    postgres_url: str, template_database: str, spec_checker: SpecChecker, **sections: Any
) -> Iterator[tuple[Gateway, UpstreamThread, str]]:
    """A gateway, upstream and database that several tests of one module may share."""
    with (
        new_database(postgres_url, template=template_database) as database_url,
        UpstreamThread(expected_api_key=UPSTREAM_KEY) as upstream,
    ):
        settings: Settings = make_settings(database_url, upstream.url, **sections)
        gateway = Gateway(settings, database_url, spec_checker).start()
        try:
            yield gateway, upstream, database_url
        finally:
            gateway.stop()


@contextlib.contextmanager
def new_database(postgres_url: str, *, template: str | None = None) -> Iterator[str]:
    """A database created for this block (empty, or copied from ``template``), then dropped."""
    name = f"asyncgate_new_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield with_database(postgres_url, name)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clean_environ(**extra: str) -> dict[str, str]:
    """The process environment without any ``ASYNCGATE_*`` or ``DATABASE_URL`` setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ASYNCGATE_") and k != "DATABASE_URL"
    }
    env.update(extra)
    return env


PYTHON = sys.executable
