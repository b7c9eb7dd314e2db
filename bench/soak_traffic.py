"""The soak run's traffic and chaos: the job mix, submitting at a steady rate (retrying 503s
and connection errors), and the schedule of worker kills and the PostgreSQL restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.soak_setup import Fleet, Postgres
from bench.soak_webhooks import WEBHOOK, WEBHOOK_HEADER

KILL_INTERVAL = (8.0, 15.0)
SUBMIT_GIVE_UP_SECONDS = 120.0
MAX_IN_FLIGHT = 400


# --- the traffic -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    path: str
    body: dict[str, Any]

    @property
    def fallbacks(self) -> int:
        return len(self.body.get("fallbacks") or [])


def job_mix(rng: random.Random, i: int) -> JobSpec:
    """Mostly chat (half with a fallback), some other kinds, 1% permanently failing."""
    roll = rng.random()
    text = f"soak job {i}"
    if roll < 0.04:
        return JobSpec(
            "completions", {"model": "fake/ok", "prompt": text, "fallbacks": ["backup/ok"]}
        )
    if roll < 0.08:
        return JobSpec("embeddings", {"model": "fake/ok", "input": [text]})
    if roll < 0.12:
        return JobSpec("responses", {"model": "fake/ok", "input": text, "fallbacks": ["backup/ok"]})
    if roll < 0.14:
        return JobSpec("images/generations", {"model": "fake/ok", "prompt": text})
    messages = [{"role": "user", "content": text}]
    if roll < 0.15:
        return JobSpec("chat/completions", {"model": "fake/status-400", "messages": messages})
    body: dict[str, Any] = {"model": "fake/ok", "messages": messages}
    if rng.random() < 0.5:
        body["fallbacks"] = ["backup/ok"]
    return JobSpec("chat/completions", body)


@dataclass
class Submissions:
    accepted: dict[str, JobSpec] = field(default_factory=dict)
    retried_503: int = 0
    retried_errors: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0
    sent: int = 0
    accepted_at: list[float] = field(default_factory=list)
    accepted_latency: list[tuple[float, float]] = field(default_factory=list)
    """(when answered, seconds taken) of every 202."""
    unavailable_latency: list[float] = field(default_factory=list)
    """Seconds taken by every 503."""


WEBHOOK_HEADERS = {WEBHOOK_HEADER: WEBHOOK}
"""Every soak job (not the probes) announces itself to the soak's webhook endpoint."""


async def submit_one(
    session: aiohttp.ClientSession, api: str, spec: JobSpec, subs: Submissions
) -> None:
    """POST until 202; a 503 is retried after its ``Retry-After``, a connection error after a
    quarter of a second; anything else is a rejection."""
    deadline = time.monotonic() + SUBMIT_GIVE_UP_SECONDS
    while True:
        pause = 0.25
        try:
            sent = time.monotonic()
            async with session.post(
                f"{api}/v1/async/{spec.path}", json=spec.body, headers=WEBHOOK_HEADERS
            ) as response:
                raw = await response.read()
                now = time.monotonic()
                if response.status == 202:
                    subs.accepted[orjson.loads(raw)["id"]] = spec
                    subs.accepted_at.append(now)
                    subs.accepted_latency.append((now, now - sent))
                    return
                if response.status != 503:
                    message = raw[:200].decode("utf-8", "replace")
                    subs.rejected[f"{response.status} {message}"] += 1
                    return
                if "Retry-After" not in response.headers:
                    subs.rejected["503 without Retry-After"] += 1
                else:  # as well-behaved clients do, spread out rather than all at once
                    pause = float(response.headers["Retry-After"]) * random.uniform(1.0, 2.0)
                subs.unavailable_latency.append(now - sent)
                subs.retried_503 += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            subs.retried_errors[exc.__class__.__name__] += 1
        if time.monotonic() > deadline:
            subs.gave_up += 1
            return
        await asyncio.sleep(pause)


async def submit_all(api: str, jobs: int, rate: float, seed: int, subs: Submissions) -> None:
    """Start one submission every ``1/rate`` seconds (fewer when ``MAX_IN_FLIGHT`` are open,
    without catching up afterwards)."""
    rng = random.Random(seed)
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=30)
    # One connection per submission in flight: time spent waiting for a client-side connection
    # would be counted as the gateway's latency.
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()

    async def one(spec: JobSpec) -> None:
        try:
            await submit_one(session, api, spec, subs)
        finally:
            slots.release()

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        next_at = time.monotonic()
        for i in range(jobs):
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            # After a stall (every slot taken during an outage) go on at the steady rate rather
            # than catching up in a burst.
            next_at = max(next_at + 1 / rate, time.monotonic())
            task = asyncio.create_task(one(job_mix(rng, i)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            subs.sent += 1
        if tasks:
            await asyncio.gather(*tasks)


# --- chaos -----------------------------------------------------------------------------------


@dataclass
class Chaos:
    kills: list[dict[str, Any]] = field(default_factory=list)
    db_restarts: int = 0
    db_down_seconds: float = 0.0
    db_down_at: float | None = None
    db_back_at: float | None = None


@dataclass
class Probe:
    """One request every ``interval`` seconds on its own connection, apart from the traffic:
    (when answered, status or 0, seconds taken) for ``GET /health`` and for a submit."""

    health: list[tuple[float, int, float]] = field(default_factory=list)
    submit: list[tuple[float, int, float]] = field(default_factory=list)


PROBE_JOB = JobSpec(
    "chat/completions", {"model": "fake/ok", "messages": [{"role": "user", "content": "probe"}]}
)


async def _timed(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, bytes, float]:
    sent = time.monotonic()
    try:
        async with session.request(method, url, json=body) as response:
            return response.status, await response.read(), time.monotonic() - sent
    except (aiohttp.ClientError, TimeoutError):
        return 0, b"", time.monotonic() - sent


async def probe(
    api: str, found: Probe, subs: Submissions, stop: asyncio.Event, interval: float
) -> None:
    """Probe until ``stop``; accepted probe jobs join ``subs`` and are checked like the rest."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as health,
        aiohttp.ClientSession(timeout=timeout) as submits,
    ):
        while not stop.is_set():
            status, _, took = await _timed(health, "GET", f"{api}/health")
            found.health.append((time.monotonic(), status, took))
            url = f"{api}/v1/async/{PROBE_JOB.path}"
            status, raw, took = await _timed(submits, "POST", url, PROBE_JOB.body)
            found.submit.append((time.monotonic(), status, took))
            if status == 202:
                subs.accepted[orjson.loads(raw)["id"]] = PROBE_JOB
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def chaos_plan(rng: random.Random, window: float) -> tuple[list[float], float]:
    """Kill times (one every 8-15 s within ``window``) and the PostgreSQL restart time."""
    kills: list[float] = []
    at = rng.uniform(*KILL_INTERVAL)
    while at < window and len(kills) < 100:
        kills.append(at)
        at += rng.uniform(*KILL_INTERVAL)
    return kills, rng.uniform(0.35, 0.6) * window


async def run_chaos(
    rng: random.Random,
    fleet: Fleet,
    pg: Postgres,
    window: float,
    db_down: float,
    chaos: Chaos,
    started: float,
) -> None:
    kills, restart_at = chaos_plan(rng, window)
    events = sorted([(t, "kill") for t in kills] + [(restart_at, "restart")])
    for at, what in events:
        delay = started + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elapsed = round(time.monotonic() - started, 1)
        if what == "kill":
            victim = fleet.kill_worker(rng.randrange(len(fleet.workers)))
            chaos.kills.append({"at": elapsed, "worker": victim})
            print(f"soak: {elapsed:6.1f}s SIGKILL {victim}", file=sys.stderr)
            continue
        print(f"soak: {elapsed:6.1f}s stopping PostgreSQL", file=sys.stderr)
        down = time.monotonic()
        await asyncio.to_thread(pg.stop_server)
        chaos.db_down_at = time.monotonic()
        await asyncio.sleep(db_down)
        await asyncio.to_thread(pg.start_server)
        chaos.db_back_at = time.monotonic()
        chaos.db_down_seconds = round(time.monotonic() - down, 2)
        chaos.db_restarts += 1
        print(
            f"soak: {time.monotonic() - started:6.1f}s PostgreSQL back "
            f"(down {chaos.db_down_seconds:.1f}s)",
            file=sys.stderr,
        )


async def supervise(fleet: Fleet, stop: asyncio.Event) -> None:
    while not stop.is_set():
        fleet.revive()
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass
