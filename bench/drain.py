"""The drain scenario: a backlog already waiting, worked off by one ``worker`` process.

    .venv/bin/python -m bench.drain [--jobs 100000] [--completed 1000000] [--revision REV]
                                    [--database-url URL] [--out bench/results]

The backlog (``jobs`` pending chat jobs, rows like the gateway's own) is written with SQL, then
``VACUUM ANALYZE``; one worker drains it against the zero-latency fake upstream. Measured: jobs/s
until every job is terminal, CPU per job of the worker and of PostgreSQL, WAL bytes and HOT
updates per job, then the claim on the empty queue right after the drain (the worker's own
CLAIM as its connections plan it, in a transaction rolled back). It runs twice: on an
otherwise empty table and beside ``completed`` terminal jobs (a table that has been in use),
where the cost must be the same.

Standalone, ``--revision`` migrates the fresh database only that far (to compare a schema
change with the one before it in one run); ``bench.run`` includes the scenario as ``drain``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from psycopg import sql

from asyncgate.models.database import Database
from asyncgate.models.jobs import CLAIM
from asyncgate.worker.loop import CLAIM_SINCE_MARGIN_SECONDS
from bench.children import Processes, wait_until
from bench.loadgen import chat_request, chat_result, latency_summary
from bench.machine import CpuMeter
from bench.report import say
from bench.scenarios import Bench, per_job_text
from tests.launch import ROOT

PROBES = 200
"""Empty-queue claims measured right after each drain, spread over about two seconds."""

# The worker's CLAIM as an SQL-level prepared statement, so that EXPLAIN ANALYZE EXECUTE shows
# it as the worker's connections run it (planned once); EXPLAIN cannot run a statement the
# driver prepared.
_CLAIM_PARAMETERS = {
    "owner": "text",
    "lease": "float8",
    "since": "timestamptz",
    "max_pending": "float8",
    "limit": "int",
}
CLAIM_PROBE = CLAIM
for _number, _name in enumerate(_CLAIM_PARAMETERS, 1):
    CLAIM_PROBE = CLAIM_PROBE.replace(f"%({_name})s", f"${_number}")
CLAIM_PROBE_TYPES = f"({', '.join(_CLAIM_PARAMETERS.values())})"


def claim_probe_explain(params: dict[str, Any]) -> sql.Composed:
    """EXPLAIN ANALYZE of the prepared claim with ``params`` (as literals: a utility
    statement takes no bound parameters)."""
    arguments = sql.SQL(", ").join(sql.Literal(params[name]) for name in _CLAIM_PARAMETERS)
    return sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) EXECUTE claim_probe({})").format(
        arguments
    )


# Time-ordered ids as the gateway makes them (asyncgate.ids): 48 bits of Unix milliseconds,
# then random bits, version 7 and the RFC 4122 variant.
ORDERED_ID = """
encode(set_byte(set_byte(overlay(uuid_send(gen_random_uuid())
    PLACING substring(int8send((extract(epoch FROM {at}) * 1000)::bigint) FROM 3) FROM 1 FOR 6),
    6, (b'0111' || get_byte(uuid_send(gen_random_uuid()), 6)::bit(8)::bit(4))::bit(8)::int),
    8, (b'10' || get_byte(uuid_send(gen_random_uuid()), 8)::bit(8)::bit(6))::bit(8)::int),
    'hex')::uuid
"""

# Pending chat jobs, oldest first, one millisecond apart, ending now.
BACKLOG = """
INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds, created_at)
SELECT {id}, 'chat_completion', %(provider)s, %(model)s, %(request)s::jsonb, 3600, at
FROM (SELECT now() - make_interval(secs => (%(jobs)s - n) / 1000.0) AS at
      FROM generate_series(1, %(jobs)s) AS n) AS t
"""

# Completed jobs of the day before, kept for a month.
COMPLETED = """
INSERT INTO async_jobs (id, kind, status, provider, model, request, ttl_seconds, result,
                        status_code, attempts, created_at, started_at, completed_at, expires_at)
SELECT {id}, 'chat_completion', 'completed', %(provider)s, %(model)s, %(request)s::jsonb,
       2592000, %(result)s::jsonb, 200, 1, at, at, at, at + interval '30 days'
FROM (SELECT now() - interval '1 day' + make_interval(secs => n / 100.0) AS at
      FROM generate_series(1, %(jobs)s) AS n) AS t
"""


class Drain:
    """The drain scenario on a :class:`bench.scenarios.Bench` (its database, upstream and
    process list); :meth:`run` stores the figures in ``bench.scenarios["drain"]``."""

    def __init__(self, bench: Bench, jobs: int, completed: int, ordered_ids: bool) -> None:
        self.bench = bench
        self.jobs = jobs
        self.completed = completed
        self.id_sql = ORDERED_ID.format(at="at") if ordered_ids else "gen_random_uuid()"
        self.request = chat_request()
        self.model = self.request["model"]

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"jobs": self.jobs, "completed_rows": self.completed}
        out["empty"] = await self.variant("empty table", 0)
        if self.completed:
            out["large"] = await self.variant(f"{self.completed} completed rows", self.completed)
        self.bench.scenarios["drain"] = out
        return out

    async def fill(self, completed: int) -> None:
        """An empty table, then ``completed`` terminal rows and the backlog, then VACUUM ANALYZE."""
        bench = self.bench
        await bench.reset_jobs()
        params = {
            "provider": self.model.split("/", 1)[0],
            "model": self.model,
            "request": json.dumps(self.request),
            "result": json.dumps(chat_result()),
        }
        if completed:
            say(f"drain: writing {completed} completed jobs")
            await self.execute(COMPLETED.format(id=self.id_sql), {**params, "jobs": completed})
        say(f"drain: writing a backlog of {self.jobs} pending jobs")
        await self.execute(BACKLOG.format(id=self.id_sql), {**params, "jobs": self.jobs})
        await bench.sql("VACUUM ANALYZE async_jobs")
        await bench.checkpoint()

    async def variant(self, label: str, completed: int) -> dict[str, Any]:
        bench = self.bench
        await self.fill(completed)
        stats_before = await self.table_stats()
        wal_before = (await bench.sql("SELECT pg_current_wal_lsn()"))[0][0]
        fpi_before, checkpoints_before = await self.wal_stats()
        _, worker = await bench.start_gateway("drain-worker", "worker", bench.upstream_url)
        say(f"drain: one worker working off {self.jobs} jobs ({label})")
        with CpuMeter(worker=worker) as cpu:
            start = time.perf_counter()
            end = await wait_until(self.drained, 600, f"{self.jobs} jobs to finish", 0.2)
        wal = (await bench.sql("SELECT pg_current_wal_lsn() - %s::pg_lsn", wal_before))[0][0]
        fpi_after, checkpoints_after = await self.wal_stats()
        after = await self.table_stats()
        claims = await self.probe_claims()
        bench.procs.stop(worker)
        elapsed = end - start
        per_job = cpu.per_job_us(self.jobs)
        updates = after["updates"] - stats_before["updates"]
        result = {
            "jobs": self.jobs,
            "completed_rows": completed,
            "seconds": round(elapsed, 3),
            "jobs_per_second": self.jobs / elapsed,
            "cpu": cpu.figures,
            "cpu_us": per_job,
            "wal_bytes_per_job": round(float(wal) / self.jobs),
            "full_page_images_per_job": round((fpi_after - fpi_before) / self.jobs, 3),
            "checkpoints": checkpoints_after - checkpoints_before,
            "hot_update_share": (after["hot"] - stats_before["hot"]) / updates if updates else 0,
            "autovacuums": after["autovacuums"] - stats_before["autovacuums"],
            "table_mb": after["mb"],
            "empty_claim": claims,
        }
        say(
            f"  {label}: {result['jobs_per_second']:.0f} jobs/s, "
            f"{result['wal_bytes_per_job']} WAL bytes/job "
            f"({result['full_page_images_per_job']:.2f} full-page images/job, "
            f"{result['checkpoints']} checkpoints), "
            f"{result['hot_update_share']:.0%} HOT updates, "
            f"{result['autovacuums']} autovacuums of the table"
        )
        say(f"    {cpu.text()}; {per_job_text(per_job)}")
        say(
            f"    empty claim right after: p50 {claims['p50_ms']:.3f} ms, "
            f"p99 {claims['p99_ms']:.3f} ms; in the server p50 {claims['server_p50_ms']:.3f} ms, "
            f"p99 {claims['server_p99_ms']:.3f} ms (after an idle pause p50 "
            f"{claims['idle_server_p50_ms']:.3f} ms); full claims in the server p50 "
            f"{claims['full_server_p50_ms']:.3f} ms, p99 {claims['full_server_p99_ms']:.3f} ms"
        )
        return result

    async def execute(self, statement: str, params: dict[str, Any]) -> None:
        assert self.bench.db is not None
        await self.bench.db.execute(statement, params)

    async def drained(self) -> float | None:
        rows = await self.bench.sql(
            "SELECT EXISTS (SELECT FROM async_jobs WHERE status = 'pending')"
            " OR EXISTS (SELECT FROM async_jobs WHERE status = 'processing')"
        )
        return None if rows[0][0] else time.perf_counter()

    async def wal_stats(self) -> tuple[int, int]:
        """Full-page images written so far, and checkpoints begun (timed or requested): after a
        checkpoint the first change of every page logs the whole page."""
        version = int((await self.bench.sql("SHOW server_version_num"))[0][0])
        checkpoints = (
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
            if version < 170000  # PostgreSQL 17 moved them to pg_stat_checkpointer
            else "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
        )
        rows = await self.bench.sql(f"SELECT (SELECT wal_fpi FROM pg_stat_wal), ({checkpoints})")
        return int(rows[0][0]), int(rows[0][1])

    async def table_stats(self) -> dict[str, float]:
        rows = await self.bench.sql(
            "SELECT n_tup_upd, n_tup_hot_upd, pg_total_relation_size(relid) / 2.0^20,"
            " autovacuum_count FROM pg_stat_user_tables WHERE relname = 'async_jobs'"
        )
        return {
            "updates": rows[0][0],
            "hot": rows[0][1],
            "mb": round(float(rows[0][2]), 1),
            "autovacuums": rows[0][3],
        }

    async def probe_claims(self) -> dict[str, float]:
        """The worker's CLAIM on the now empty queue, ``PROBES`` times over about two seconds,
        planned as the worker's connections plan it (prepared, one generic plan).

        Bounded as the worker's claims are between its full ones (from the newest job it
        claimed, less its margin): as the client sees it (``p50_ms``, ``p99_ms``) and inside
        the server (planning and execution, from ``EXPLAIN ANALYZE EXECUTE``). Inside the
        server each probe runs twice in a row: the second run is the claim's own cost
        (``server_p50_ms``, ``server_p99_ms``), the first adds what a backend that slept
        since its last statement pays on this machine (``idle_server_p50_ms``,
        ``idle_server_p99_ms``; caches and a woken core, three to four times as long here). A
        tenth of the probes are full claims, which the worker makes once per poll interval
        (``full_server_p50_ms``, ``full_server_p99_ms``, run twice as well).
        """
        rows = await self.bench.sql("SELECT max(created_at) FROM async_jobs")
        since = rows[0][0] - timedelta(seconds=CLAIM_SINCE_MARGIN_SECONDS)
        bounded = {"owner": "drain-probe", "limit": 100, "lease": 30.0, "max_pending": 86400.0}
        bounded["since"] = since
        client: list[float] = []
        server: list[float] = []
        idle: list[float] = []
        full: list[float] = []
        db = Database(self.bench.database_url, pool_size=1, generic_plans=True)
        await db.open()
        try:
            async with db.connection() as conn:
                await conn.execute(f"PREPARE claim_probe {CLAIM_PROBE_TYPES} AS {CLAIM_PROBE}")
                for i in range(PROBES):
                    if i % 2:
                        params = {**bounded, "since": None} if i % 10 == 9 else bounded
                        took = []
                        for _ in range(2):
                            cur = await conn.execute(claim_probe_explain(params))
                            plan = (await cur.fetchall())[0][0][0]
                            took.append((plan["Planning Time"] + plan["Execution Time"]) / 1000)
                            claimed = plan["Plan"]["Actual Rows"]
                        if params["since"] is None:
                            full.append(took[1])
                        else:
                            idle.append(took[0])
                            server.append(took[1])
                    else:
                        start = time.perf_counter()
                        async with conn.transaction(force_rollback=True):
                            cur = await conn.execute(CLAIM, bounded)
                            claimed = len(await cur.fetchall())
                        client.append(time.perf_counter() - start)
                    if claimed:
                        raise RuntimeError(f"the drained queue still had {claimed} jobs")
                    await asyncio.sleep(2.0 / PROBES)
                await conn.execute("DEALLOCATE claim_probe")
        finally:
            await db.close()
        inside, woken, whole = (latency_summary(x) for x in (server, idle, full))
        return {
            **latency_summary(client),
            "server_p50_ms": inside["p50_ms"],
            "server_p99_ms": inside["p99_ms"],
            "idle_server_p50_ms": woken["p50_ms"],
            "idle_server_p99_ms": woken["p99_ms"],
            "full_server_p50_ms": whole["p50_ms"],
            "full_server_p99_ms": whole["p99_ms"],
        }


async def run_drain(bench: Bench, jobs: int, completed: int) -> dict[str, Any]:
    """The scenario with a connection of its own on ``bench`` (whose own has closed)."""
    async with bench.connection():
        return await Drain(bench, jobs, completed, ordered_ids=True).run()


def main(argv: list[str] | None = None) -> int:
    from asyncgate.models import migrate
    from bench.harness import run_scenario

    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000, help="backlog size")
    parser.add_argument("--completed", type=int, default=1_000_000, help="terminal rows beside")
    parser.add_argument("--revision", help="migrate only this far (default: head)")
    parser.add_argument("--random-ids", action="store_true", help="uuid4 ids for the rows")
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), type=Path)
    args = parser.parse_args(argv)

    async def scenario(url: str, work: Path, procs: Processes) -> dict[str, Any]:
        if args.revision:
            migrate.downgrade(url, args.revision)
        async with Bench.alone(True, procs, work, url) as bench:
            drain = Drain(bench, args.jobs, args.completed, ordered_ids=not args.random_ids)
            return await drain.run()

    figures = run_scenario("asyncgate-drain-", args.database_url, args.out, scenario)
    path = args.out / f"drain-{args.revision or 'head'}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    say(f"figures in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
