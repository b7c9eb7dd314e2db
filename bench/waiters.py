"""Many long-polls on one API process: what 5,000 waiting clients cost and how fast they hear.

    .venv/bin/python -m bench.waiters [--clients 5000] [--batch 10] [--interval 0.01]
                                      [--database-url URL] [--out bench/results]

One ``asyncgate api`` process (no worker) serves ``--clients`` pending jobs, each long-polled by
its own client connection with ``Prefer: wait=60``. Once every wait is registered (the API
process has gone idle), the jobs are made terminal in batches by statements of the same shape
as a worker's finish (the UPDATE announces each id on the done channel), and each client's
delay from that commit to its answer is measured. Reported: delay p50/p99, the API process's
RSS growth while the clients wait, and its database connections before and during the wait
(``pg_stat_activity``, after a burst of polls has opened the whole pool). The figures go to
``waiters.json`` in ``--out`` (``waiters-batchN.json`` for another ``--batch``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import psycopg

from asyncgate.models.jobs import DONE_CHANNEL
from bench.children import Processes, gateway_config
from bench.harness import run_scenario
from bench.loadgen import CHAT_PATH, latency_summary
from bench.report import say
from tests.launch import ROOT, free_port

GOALS = {"p50_ms": 5.0, "p99_ms": 50.0, "rss_growth_mb": 100.0, "extra_connections": 0}
BATCH = 10
"""Jobs made terminal by one statement, by default."""
BATCH_INTERVAL = 0.01
"""Seconds between two such statements, by default (1,000 jobs a second)."""

INSERT = """
INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds)
SELECT id, 'chat_completion', 'fake', 'fake/ok',
       '{"model": "fake/ok", "messages": [{"role": "user", "content": "hi"}]}', 3600
FROM unnest(%s::uuid[]) AS t(id)
"""

COMPLETE = f"""
UPDATE async_jobs
SET status = 'completed', status_code = 200, result = '{{"object": "chat.completion"}}',
    completed_at = now(), expires_at = now() + make_interval(secs => ttl_seconds)
WHERE id = ANY(%s) AND status = 'pending'
RETURNING pg_notify('{DONE_CHANNEL}', id::text)
"""

CONNECTIONS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


async def _idle(proc: psutil.Process, quiet: float = 1.0) -> None:
    """Until ``proc`` used no CPU for ``quiet`` seconds: every request has been taken in."""
    last = sum(proc.cpu_times()[:2])
    while True:
        await asyncio.sleep(quiet)
        now = sum(proc.cpu_times()[:2])
        if now - last < 0.01:
            return
        last = now


async def measure(
    url: str, api_url: str, proc: psutil.Process, clients: int, batch: int, interval: float
) -> dict[str, Any]:
    ids = [uuid.uuid4() for _ in range(clients)]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(INSERT, (ids,))
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def poll(job_id: uuid.UUID) -> None:
                async with session.get(f"{api_url}{CHAT_PATH}/{job_id}") as response:
                    await response.read()

            # Polls at once open the whole pool and warm the code paths before the baseline.
            await asyncio.gather(*(poll(j) for j in ids[:200]))
            await _idle(proc)
            rss_before = proc.memory_info().rss
            conns_before = (await (await conn.execute(CONNECTIONS)).fetchone() or (0,))[0]
            answered: dict[uuid.UUID, float] = {}
            statuses: dict[uuid.UUID, tuple[int, str, str | None]] = {}

            async def wait(job_id: uuid.UUID) -> None:
                async with session.get(
                    f"{api_url}{CHAT_PATH}/{job_id}", headers={"Prefer": "wait=60"}
                ) as response:
                    body = await response.read()
                    answered[job_id] = time.monotonic()
                    status = orjson.loads(body).get("status")
                    statuses[job_id] = (
                        response.status,
                        str(status),
                        response.headers.get("Preference-Applied"),
                    )

            say(f"opening {clients} long-polls")
            tasks = []
            for start in range(0, clients, 500):
                tasks += [asyncio.create_task(wait(j)) for j in ids[start : start + 500]]
                await asyncio.sleep(0.2)
            await _idle(proc)
            if answered:
                raise RuntimeError(
                    f"{len(answered)} long-polls were answered before their job ended"
                )
            rss_waiting = proc.memory_info().rss
            conns_waiting = (await (await conn.execute(CONNECTIONS)).fetchone() or (0,))[0]
            say(f"{clients} clients waiting; making their jobs terminal")
            committed: dict[uuid.UUID, float] = {}
            for start in range(0, clients, batch):
                chunk = ids[start : start + batch]
                await conn.execute(COMPLETE, (chunk,))
                done = time.monotonic()
                committed.update(dict.fromkeys(chunk, done))
                await asyncio.sleep(interval)
            await asyncio.gather(*tasks)
    delays = [max(0.0, answered[j] - committed[j]) for j in ids]
    wrong = [s for s in statuses.values() if s != (200, "completed", "wait=60")]
    return {
        "clients": clients,
        "batch": batch,
        "batch_interval_seconds": interval,
        "answered": len(answered),
        "wrong_answers": len(wrong),
        "delay_ms": latency_summary(delays),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_waiting_mb": round(rss_waiting / 2**20, 1),
        "rss_growth_mb": round((rss_waiting - rss_before) / 2**20, 1),
        "db_connections_before": conns_before,
        "db_connections_waiting": conns_waiting,
        "extra_connections": conns_waiting - conns_before,
    }


def report(figures: dict[str, Any]) -> str:
    delay = figures["delay_ms"]
    lines = [
        f"long-polls: {figures['clients']} clients on one API process, jobs ended "
        f"{figures['batch']} per statement every {figures['batch_interval_seconds'] * 1000:g} ms, "
        f"{figures['answered']} answered, {figures['wrong_answers']} wrong",
        f"  commit -> answer: p50 {delay['p50_ms']:.1f} ms (goal <= {GOALS['p50_ms']:g}), "
        f"p99 {delay['p99_ms']:.1f} ms (goal <= {GOALS['p99_ms']:g}), "
        f"max {delay['max_ms']:.1f} ms",
        f"  API RSS: {figures['rss_before_mb']} MB -> {figures['rss_waiting_mb']} MB "
        f"(+{figures['rss_growth_mb']} MB, goal < {GOALS['rss_growth_mb']:g})",
        f"  database connections: {figures['db_connections_before']} before, "
        f"{figures['db_connections_waiting']} while waiting "
        f"({figures['extra_connections']:+d}, goal {GOALS['extra_connections']})",
    ]
    return "\n".join(lines)


def passed(figures: dict[str, Any]) -> bool:
    delay = figures["delay_ms"]
    return (
        figures["answered"] == figures["clients"]
        and figures["wrong_answers"] == 0
        and delay["p50_ms"] <= GOALS["p50_ms"]
        and delay["p99_ms"] <= GOALS["p99_ms"]
        and figures["rss_growth_mb"] < GOALS["rss_growth_mb"]
        and figures["extra_connections"] <= GOALS["extra_connections"]
    )


async def run(url: str, work: Path, procs: Processes, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    config = gateway_config(
        work / "waiters.toml", port=port, database_url=url, upstream_url="http://127.0.0.1:9"
    )
    api = procs.start_gateway("waiters-api", config, "api")
    api_url = f"http://127.0.0.1:{port}"
    await procs.wait_http(api_url, api)
    process = psutil.Process(api.pid)
    return await measure(url, api_url, process, args.clients, args.batch, args.interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waiters", description=__doc__)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=BATCH, help="jobs ended per statement")
    parser.add_argument(
        "--interval", type=float, default=BATCH_INTERVAL, help="seconds between statements"
    )
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), type=Path)
    args = parser.parse_args(argv)
    out: Path = args.out

    async def scenario(url: str, work: Path, procs: Processes) -> dict[str, Any]:
        return await run(url, work, procs, args)

    figures = run_scenario("asyncgate-waiters-", args.database_url, out, scenario)
    figures["passed"] = passed(figures)
    name = "waiters.json" if args.batch == BATCH else f"waiters-batch{args.batch}.json"
    (out / name).write_text(json.dumps(figures, indent=2) + "\n")
    print(report(figures), flush=True)
    verdict = "all goals met" if figures["passed"] else "goals missed"
    say(f"{verdict}; figures in {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
