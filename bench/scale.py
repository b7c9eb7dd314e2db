"""At scale (``python -m bench.run --at-scale``): submit, poll and claim with a million
completed jobs in the table against the same on an empty one, then submits while the sweeper
deletes a million expired rows.

The big table is filled with SQL (``INSERT ... SELECT ... FROM generate_series``, then
``VACUUM ANALYZE``), every row a completed chat job with a ~1 KB request and a ~1 KB result,
already expired, so that the sweep has them all to delete; the polled job is one more row that
has not expired. Claims run the worker's own ``CLAIM`` statement back to back until a batch of
pending rows is drained. The sweep runs in a child process (``python -m bench.scale sweep``)
calling :meth:`asyncgate.worker.sweeper.Sweeper.sweep_once`, the code path of a worker's
sweeper, with the settings given on its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson

from asyncgate.models.database import Database
from asyncgate.models.jobs import CLAIM
from bench.drain import ORDERED_ID
from bench.loadgen import (
    CHAT_PATH,
    Call,
    RunStats,
    chat_request,
    chat_result,
    client_session,
    closed_loop,
)
from bench.machine import CpuMeter
from bench.report import say
from bench.scenarios import CLIENTS, Bench, per_job_text

ROWS = 1_000_000
"""Completed jobs in the big table."""

SWEEP_CAP_SECONDS = 90.0
"""Submits are measured while the sweep runs, but no longer than this."""

# One completed chat job per number; created a millisecond apart over the past, so the rows lie
# on disk in expires_at order as they would after real traffic, with time-ordered ids as the
# gateway gives them (random ones would spread each claim's primary-key entries over the whole
# index of a million rows, which the gateway's never do).
FILL = f"""
INSERT INTO async_jobs (id, kind, status, provider, model, request, ttl_seconds, result,
                        status_code, attempts, created_at, started_at, completed_at, expires_at)
SELECT {ORDERED_ID.format(at="t")}, 'chat_completion', 'completed', 'fake', 'fake/ok',
       %(request)s::jsonb, %(ttl)s, %(result)s::jsonb, 200, 1, t, t, t,
       t + make_interval(secs => %(ttl)s)
FROM (
    SELECT now() - make_interval(secs => %(ttl)s + 60 + (%(rows)s - g) / 1000.0) AS t
    FROM generate_series(1, %(rows)s) AS g
) s
"""

# The polled job: completed, not expired.
FILL_POLLED = """
INSERT INTO async_jobs (id, kind, status, provider, model, request, ttl_seconds, result,
                        status_code, attempts, completed_at, expires_at)
VALUES (%(id)s, 'chat_completion', 'completed', 'fake', 'fake/ok', %(request)s::jsonb, 86400,
        %(result)s::jsonb, 200, 1, now(), now() + interval '1 day')
"""

# Pending jobs a microsecond apart, ending now, with time-ordered ids.
FILL_PENDING = f"""
INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds, created_at)
SELECT {ORDERED_ID.format(at="t")}, 'chat_completion', 'fake', 'fake/ok', %(request)s::jsonb,
       3600, t
FROM (SELECT now() - make_interval(secs => (%(rows)s - g) / 1000000.0) AS t
      FROM generate_series(1, %(rows)s) AS g) s
"""

# What the measurements leave behind (pending and claimed jobs), not the filled rows.
CLEAN = "DELETE FROM async_jobs WHERE status <> 'completed'"


class AtScale:
    """The at-scale scenario on a :class:`bench.scenarios.Bench` (its processes, database and
    helpers); figures go to ``results["scenarios"]["at_scale"]``."""

    def __init__(self, bench: Bench, sweeper: dict[str, float], rows: int = ROWS) -> None:
        self.bench = bench
        self.rows = rows
        self.sweeper = sweeper
        self.request = orjson.dumps(chat_request()).decode()
        self.result = orjson.dumps(chat_result()).decode()
        self.polled = uuid.uuid4()
        self.claim_jobs = 5000 if bench.plan.quick else 20000
        self.out: dict[str, Any] = {"rows": rows, "clients": CLIENTS, "sweeper": sweeper}

    async def settle(self) -> None:
        """Remove what measurements left, vacuum, analyze and checkpoint: the next measurement
        starts with the same table, statistics and no pending checkpoint work."""
        await self.bench.sql(CLEAN)
        await self.bench.sql("VACUUM ANALYZE async_jobs")
        await self.bench.checkpoint()

    async def figures(self, label: str, url: str, api: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Submit, poll and claim on the table as it is now."""
        bench = self.bench
        out: dict[str, Any] = {}
        await self.settle()
        out["submit"] = await bench._measure(f"{label}: submit", bench.submit_call(url), api)
        await self.settle()
        poll = Call("GET", f"{url}{CHAT_PATH}/{self.polled}", 200)
        out["poll"] = await bench._measure(f"{label}: poll", poll, api, "polls")
        await self.settle()
        out["claim"] = await self.claim(label)
        await self.settle()
        return out

    async def claim(self, label: str) -> dict[str, Any]:
        """The worker's CLAIM (100 at a time) back to back until ``claim_jobs`` are claimed."""
        bench = self.bench
        assert bench.db is not None
        await bench.db.execute(CLEAN)
        await bench.db.execute(FILL_PENDING, {"request": self.request, "rows": self.claim_jobs})
        params = {
            "owner": "bench-claim",
            "lease": 30.0,
            "max_pending": 86400.0,
            "limit": 100,
            "since": None,
        }
        say(f"{label}: claim {self.claim_jobs} pending jobs, 100 at a time")
        stats = RunStats()
        # Connected as the worker connects: its statements are planned once (generic plans).
        db = Database(bench.database_url, pool_size=1, generic_plans=True)
        await db.open()
        try:
            async with db.connection() as conn:
                with CpuMeter() as cpu:
                    start = time.perf_counter()
                    while True:
                        began = time.perf_counter()
                        cur = await conn.execute(CLAIM, params)
                        claimed = len(await cur.fetchall())
                        if not claimed:
                            break
                        stats.latencies.extend([time.perf_counter() - began] * claimed)
                    stats.elapsed = time.perf_counter() - start
        finally:
            await db.close()
        per_job = cpu.per_job_us(stats.ok)
        say(f"  claim: {stats.ok / stats.elapsed:.0f} jobs/s; {per_job_text(per_job)}")
        return {
            "jobs": stats.ok,
            "seconds": round(stats.elapsed, 3),
            "per_second": stats.ok / stats.elapsed,
            "cpu": cpu.figures,
            "cpu_us": per_job,
        }

    async def fill(self) -> None:
        say(f"at scale: filling {self.rows} completed (expired) jobs with SQL")
        started = time.perf_counter()
        assert self.bench.db is not None
        await self.bench.db.execute(
            FILL, {"request": self.request, "result": self.result, "ttl": 3600, "rows": self.rows}
        )
        await self.settle()
        rows = await self.bench.sql("SELECT pg_size_pretty(pg_total_relation_size('async_jobs'))")
        self.out["fill_seconds"] = round(time.perf_counter() - started, 1)
        self.out["table_size"] = rows[0][0]
        say(f"  filled in {self.out['fill_seconds']:.0f}s; async_jobs is {rows[0][0]}")

    async def sweep(self, url: str, api: subprocess.Popen[bytes]) -> None:
        """Submits for the planned time without a sweeper, then while one deletes the rows."""
        bench = self.bench
        await self.settle()
        quiet = await bench._measure("sweep: submit, no sweeper", bench.submit_call(url), api)
        await bench.sql(CLEAN)
        await bench.checkpoint()
        sweeper = bench.procs.start(
            "scale-sweeper",
            "-m",
            "bench.scale",
            "sweep",
            "--database-url",
            bench.database_url,
            "--config",
            json.dumps(self.sweeper),
            "--out",
            str(bench.work / "sweep.json"),
        )
        say(f"sweep: submit while the sweeper deletes ({self.sweeper}), {CLIENTS} clients")
        stats = RunStats()
        async with client_session(CLIENTS) as session:
            call = bench.submit_call(url)
            with CpuMeter(api, sweeper=sweeper) as cpu:
                start = time.perf_counter()
                while sweeper.poll() is None and time.perf_counter() - start < SWEEP_CAP_SECONDS:
                    window = await closed_loop(session, call, concurrency=CLIENTS, duration=2.0)
                    stats.latencies += window.latencies
                    stats.errors += window.errors
                    stats.unexpected.update(window.unexpected)
                stats.elapsed = time.perf_counter() - start
        await asyncio.to_thread(sweeper.wait, 600)
        if sweeper.returncode:
            bench.procs.check(sweeper)
        swept = json.loads((bench.work / "sweep.json").read_text())
        during = {**stats.summary(), "cpu": cpu.figures, "cpu_us": cpu.per_job_us(stats.ok)}
        bench._show("during the sweep", stats, cpu)
        slowdown = during["per_second"] / quiet["per_second"] - 1
        say(
            f"  sweep deleted {swept['deleted']} rows in {swept['seconds']:.1f}s; submits "
            f"{slowdown:+.1%} during it, p99 {during['p99_ms']:.1f} ms"
        )
        self.out["sweep"] = {
            "no_sweeper": quiet,
            "sweeping": during,
            "swept": swept,
            "slowdown": slowdown,
        }

    async def run(self) -> None:
        bench = self.bench
        await bench.open()
        assert bench.db is not None
        try:
            await bench.reset_jobs()
            await bench.db.execute(
                FILL_POLLED, {"id": self.polled, "request": self.request, "result": self.result}
            )
            url, api = await bench.start_gateway("scale-api", "api", bench.upstream_url)
            self.out["small"] = await self.figures("small table", url, api)
            await self.fill()
            self.out["large"] = await self.figures(f"{self.rows} rows", url, api)
            await self.sweep(url, api)
            bench.procs.stop(api)
            self.out["ratios"] = ratios(self.out["small"], self.out["large"])
            say(f"at scale: large/small {self.out['ratios']}")
        finally:
            bench.scenarios["at_scale"] = self.out
            await bench.db.close()


def ratios(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float]:
    """Large-table figure / small-table figure for throughput, p99 and CPU per request."""
    out: dict[str, float] = {}
    for name in ("submit", "poll", "claim"):
        out[f"{name}_per_second"] = round(large[name]["per_second"] / small[name]["per_second"], 3)
        for group in ("server", "postgres"):
            a, b = small[name]["cpu_us"].get(group), large[name]["cpu_us"].get(group)
            if a and b:
                out[f"{name}_cpu_{group}"] = round(b / a, 3)
    out["submit_p99"] = round(large["submit"]["p99_ms"] / small["submit"]["p99_ms"], 3)
    return out


async def _sweep(database_url: str, config: dict[str, Any]) -> dict[str, Any]:
    from asyncgate.config import SweeperConfig
    from asyncgate.models.database import Database
    from asyncgate.models.jobs import JobStore
    from asyncgate.worker.sweeper import Sweeper

    db = Database(database_url, pool_size=2)
    await db.open()
    try:
        sweeper = Sweeper(JobStore(db), SweeperConfig(**config))
        start = time.perf_counter()
        deleted = await sweeper.sweep_once()
        return {"deleted": deleted, "seconds": time.perf_counter() - start}
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    """``sweep``: one :meth:`Sweeper.sweep_once` with the given ``[sweeper]`` settings; its
    count and time go to ``--out`` as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("command", choices=["sweep"])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--config", default="{}", help="[sweeper] settings as JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(_sweep(args.database_url, json.loads(args.config)))
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
