"""The load generator: lean aiohttp clients (closed and open loop), raw and group-committed inserts.

It runs inside the benchmark process, on the same two cores as the servers it measures, so the
per-request work here is kept to a minimum: request bodies and URLs are built once, answers are
read but parsed only when a job id is needed, and latencies go into a plain list.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import psycopg_pool
from yarl import URL

from asyncgate.ids import new_job_id
from asyncgate.kinds import Kind
from asyncgate.models.committer import group_committer
from asyncgate.models.database import Database
from asyncgate.models.jobs import JobStore, NewJob

CHAT_PATH = "/v1/async/chat/completions"
JSON_HEADERS = {"Content-Type": "application/json"}

OnAnswer = Callable[[bytes, float], None]
"""Called with the body and ``time.monotonic()`` of each answer that had the expected status."""


def chat_request(size: int = 1024, model: str = "fake/ok") -> dict[str, Any]:
    """A chat completion request whose JSON encoding is ``size`` bytes (for sizes >= ~300)."""
    request: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one paragraph."},
            {"role": "user", "content": ""},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "user": "bench-client-0001",
    }
    filler = "Summarise the quarterly figures for the northern region and list risks. "
    text = (filler * (size // len(filler) + 1))[: max(0, size - len(orjson.dumps(request)))]
    request["messages"][1]["content"] = text
    return request


def chat_result(size: int = 1024) -> dict[str, Any]:
    """A chat completion answer whose JSON encoding is about ``size`` bytes."""
    answer: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "fake/ok",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 200, "completion_tokens": 180, "total_tokens": 380},
    }
    filler = "Revenue in the northern region rose while costs held steady through the quarter. "
    text = (filler * (size // len(filler) + 1))[: max(0, size - len(orjson.dumps(answer)))]
    answer["choices"][0]["message"]["content"] = text
    return answer


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, linearly interpolated; NaN if empty."""
    if not sorted_values:
        return float("nan")
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of latencies given in seconds, reported in milliseconds."""
    values = sorted(seconds)
    return {
        "p50_ms": percentile(values, 0.50) * 1000,
        "p90_ms": percentile(values, 0.90) * 1000,
        "p99_ms": percentile(values, 0.99) * 1000,
        "max_ms": (values[-1] if values else float("nan")) * 1000,
    }


@dataclass
class RunStats:
    """What one load run saw; latencies are those of answers with the expected status."""

    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    unexpected: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "unexpected": dict(self.unexpected),
            "seconds": round(self.elapsed, 3),
            "per_second": self.ok / self.elapsed if self.elapsed > 0 else 0.0,
            **latency_summary(self.latencies),
        }


def client_session(connections: int) -> aiohttp.ClientSession:
    """A keep-alive session holding at most ``connections`` connections."""
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=None, use_dns_cache=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=60),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


@dataclass(frozen=True)
class Call:
    """One request, repeated: method, URL, optional body and the status that counts as success."""

    method: str
    url: str
    expected: int
    body: bytes | None = None
    idempotent: bool = False
    """Send a new ``Idempotency-Key`` with every request (each one a first use)."""

    def target(self) -> URL:
        return URL(self.url, encoded=False)


async def _one(
    session: aiohttp.ClientSession,
    call: Call,
    url: URL,
    stats: RunStats,
    on_answer: OnAnswer | None,
) -> None:
    headers = JSON_HEADERS if call.body is not None else None
    if call.idempotent:
        headers = {**(headers or {}), "Idempotency-Key": uuid.uuid4().hex}
    start = time.perf_counter()
    try:
        async with session.request(call.method, url, data=call.body, headers=headers) as response:
            payload = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        stats.errors += 1
        stats.unexpected[type(exc).__name__] += 1
        return
    end = time.perf_counter()
    if status != call.expected:
        stats.errors += 1
        stats.unexpected[str(status)] += 1
        return
    stats.latencies.append(end - start)
    if on_answer is not None:
        on_answer(payload, time.monotonic())


async def closed_loop(
    session: aiohttp.ClientSession,
    call: Call,
    *,
    concurrency: int,
    duration: float | None = None,
    count: int | None = None,
    time_limit: float = 120.0,
    on_answer: OnAnswer | None = None,
) -> RunStats:
    """``concurrency`` clients, each sending its next request as soon as the last is answered.

    Stops after ``duration`` seconds or once ``count`` requests were sent (whichever is given),
    and in any case after ``time_limit`` seconds.
    """
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    stats = RunStats()
    url = call.target()
    start = time.perf_counter()
    deadline = start + min(duration if duration is not None else time_limit, time_limit)
    remaining = count if count is not None else -1

    async def client() -> None:
        nonlocal remaining
        while time.perf_counter() < deadline and remaining != 0:
            remaining -= 1
            await _one(session, call, url, stats, on_answer)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    stats.elapsed = time.perf_counter() - start
    return stats


async def open_loop(
    session: aiohttp.ClientSession,
    call: Call,
    *,
    rate: float,
    duration: float,
    on_answer: OnAnswer | None = None,
) -> RunStats:
    """Send ``rate`` requests per second on a fixed schedule for ``duration`` seconds."""
    stats = RunStats()
    url = call.target()
    total = int(rate * duration)
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[None]] = []
    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(session, call, url, stats, on_answer)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    stats.elapsed = loop.time() - start
    return stats


INSERT_ONE = """
INSERT INTO async_jobs (id, kind, owner_key_id, provider, model, request, ttl_seconds)
VALUES (%s, 'chat_completion', NULL, %s, %s, %s::jsonb, %s)
RETURNING id, created_at
"""


async def repeat_calls(
    call: Callable[[], Awaitable[object]],
    *,
    duration: float,
    concurrency: int,
    meter: contextlib.AbstractContextManager[Any] | None = None,
) -> RunStats:
    """``concurrency`` tasks awaiting ``call()`` back to back for ``duration`` seconds.

    Each completed call's time goes into the latencies; an exception ends the run. ``meter`` is
    entered just before the tasks start and left once they have all finished.
    """
    stats = RunStats()
    measuring = meter or contextlib.nullcontext()
    start = time.perf_counter()
    deadline = start + duration

    async def caller() -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await call()
            stats.latencies.append(time.perf_counter() - began)

    with measuring:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    stats.elapsed = time.perf_counter() - start
    return stats


async def raw_inserts(
    database_url: str,
    request: dict[str, Any],
    *,
    duration: float,
    inserters: int = 64,
    connections: int = 8,
    meter: contextlib.AbstractContextManager[Any] | None = None,
) -> RunStats:
    """Single-row INSERT transactions into ``async_jobs`` from ``inserters`` tasks sharing a pool.

    The row is the one the gateway writes for ``request`` (same columns, same jsonb text); each
    INSERT is its own transaction (autocommit). ``meter`` is entered once the pool is open and
    left before it closes, so that it sees the connections' server processes.
    """
    text = orjson.dumps(request).decode()
    provider, model = request["model"].split("/", 1)[0], request["model"]
    async with psycopg_pool.AsyncConnectionPool(
        database_url,
        min_size=connections,
        max_size=connections,
        kwargs={"autocommit": True},
        open=False,
    ) as pool:
        await pool.open(wait=True)

        async def insert() -> None:
            async with pool.connection() as conn:
                cur = await conn.execute(INSERT_ONE, (new_job_id(), provider, model, text, 3600))
                await cur.fetchone()

        return await repeat_calls(insert, duration=duration, concurrency=inserters, meter=meter)


async def group_commits(
    database_url: str,
    request: dict[str, Any],
    *,
    duration: float,
    submitters: int = 64,
    connections: int = 8,
    meter: contextlib.AbstractContextManager[Any] | None = None,
    idempotent: bool = False,
) -> RunStats:
    """The same rows as :func:`raw_inserts`, committed through the gateway's group committer.

    With ``idempotent`` every job carries a new Idempotency-Key (and its request hash).

    ``submitters`` tasks each await ``submit(job)`` of one
    :func:`models.committer.group_committer` on a ``models.database.Database`` of
    ``connections`` connections, so concurrent submissions share a transaction (no HTTP).
    ``meter`` is entered once the pool and the committer are up and left before they close.
    """
    provider, model = request["model"].split("/", 1)[0], request["model"]
    db = Database(database_url, pool_size=connections)
    await db.open()
    try:
        committer = group_committer(JobStore(db))
        committer.start()
        try:

            async def submit() -> None:
                job = NewJob(
                    id=new_job_id(),
                    kind=Kind.CHAT_COMPLETION,
                    owner_key_id=None,
                    provider=provider,
                    model=model,
                    request=request,
                    ttl_seconds=3600,
                )
                if idempotent:
                    job.idempotency_key = uuid.uuid4().hex
                    job.request_hash = hashlib.sha256(orjson.dumps(request)).digest()
                await committer.submit(job)

            return await repeat_calls(
                submit, duration=duration, concurrency=submitters, meter=meter
            )
        finally:
            await committer.stop()
    finally:
        await db.close()
