"""Webhook deliveries: how many per second, and how soon after a job ends the first attempt goes.

    .venv/bin/python -m bench.webhooks [--backlog 2000] [--jobs 500] [--rate 50]
                                       [--database-url URL] [--out bench/results]

One ``asyncgate serve`` process, the fake upstream in a process of its own, and a receiver on a
loopback port in this process that answers 200 to everything. Two phases:

1. Throughput: ``--backlog`` jobs finish under a gateway without ``webhooks.secret_key`` (its
   worker delivers nothing, so their deliveries wait), then a gateway with the key takes over;
   deliveries per second is the backlog over the span from the first attempt to the last
   delivery, as the delivery table records them.
2. Delay: ``--jobs`` jobs submitted at ``--rate`` per second with the endpoint enabled; for each,
   the time from the job's terminal write (the delivery row's ``created_at``, written by the same
   statement) to its delivery's first attempt (``first_attempt_at``), both PostgreSQL clocks,
   and to the receiver's arrival. Goal: p50 <= 20 ms, p99 <= 100 ms.

Figures go to ``webhooks.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from bench.children import Processes, child_environment, gateway_config, wait_until
from bench.harness import run_scenario
from bench.loadgen import CHAT_PATH, chat_request, latency_summary
from bench.report import say
from tests.launch import ROOT, free_port, gateway_argv
from tests.receiver import Receiver

GOAL_P50_MS = 20.0
GOAL_P99_MS = 100.0
HOOK = "bench"


def cli(config: Path, *args: str) -> str:
    done = subprocess.run(
        gateway_argv(config, "webhooks", *args),
        capture_output=True,
        text=True,
        check=False,
        env=child_environment(),
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"webhooks {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def one_row(url: str, statement: str) -> tuple[Any, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
    assert row is not None
    return tuple(row)


async def submit(session: aiohttp.ClientSession, api_url: str, count: int, rate: float) -> None:
    body = chat_request(256)
    headers = {"x-bf-async-webhook": HOOK}
    interval = 1.0 / rate if rate > 0 else 0.0
    started = time.monotonic()

    async def one(i: int) -> None:
        if interval:
            await asyncio.sleep(max(0.0, started + i * interval - time.monotonic()))
        async with session.post(f"{api_url}{CHAT_PATH}", json=body, headers=headers) as response:
            if response.status != 202:
                raise RuntimeError(f"submit answered {response.status}: {await response.text()}")

    semaphore = asyncio.Semaphore(64)

    async def bounded(i: int) -> None:
        async with semaphore:
            await one(i)

    await asyncio.gather(*(bounded(i) for i in range(count)))


async def measure(
    url: str,
    procs: Processes,
    configs: tuple[Path, Path],
    port: int,
    receiver: Receiver,
    backlog: int,
    jobs: int,
    rate: float,
    per_endpoint: int,
) -> dict[str, Any]:
    api_url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        keyless = procs.start_gateway("webhooks-keyless", configs[0], "serve")
        await procs.wait_http(api_url, keyless)
        say(f"throughput: {backlog} jobs finish under a gateway that delivers nothing")
        await submit(session, api_url, backlog, 0)

        async def waiting() -> bool:
            return one_row(url, "SELECT count(*) FROM async_webhook_deliveries")[0] >= backlog

        await wait_until(waiting, 300, "every backlog job's delivery row")
        procs.stop(keyless)
        serve = procs.start_gateway("webhooks-serve", configs[1], "serve")
        await procs.wait_http(api_url, serve)

        async def delivered(total: int) -> bool:
            row = one_row(
                url, "SELECT count(*) FROM async_webhook_deliveries WHERE state = 'delivered'"
            )
            return row[0] >= total

        await wait_until(lambda: delivered(backlog), 600, "the backlog's deliveries")
        first, last = one_row(
            url, "SELECT min(first_attempt_at), max(finished_at) FROM async_webhook_deliveries"
        )
        span = (last - first).total_seconds()
        say(f"delay: {jobs} jobs at {rate:g}/s with the endpoint enabled")
        arrivals_before = len(receiver.deliveries)
        await submit(session, api_url, jobs, rate)
        await wait_until(lambda: delivered(backlog + jobs), 300, "the timed jobs' deliveries")

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT job_id::text, extract(epoch FROM created_at)::float8, "
            "extract(epoch FROM first_attempt_at - created_at)::float8 "
            "FROM async_webhook_deliveries ORDER BY created_at DESC LIMIT %s",
            (jobs,),
        ).fetchall()
        latencies = conn.execute(
            "SELECT latency_ms / 1000.0 FROM async_webhook_attempts"
        ).fetchall()
    written = {job_id: created for job_id, created, _ in rows}
    arrived = {d.json["data"]["job_id"]: d.arrived for d in receiver.deliveries[arrivals_before:]}
    to_receiver = [arrived[j] - written[j] for j in written if j in arrived]
    duplicates = len(receiver.deliveries) - len(
        {d.headers["webhook-id"] for d in receiver.deliveries}
    )
    return {
        "backlog": backlog,
        "concurrency_per_endpoint": per_endpoint,
        "deliveries_per_second": round(backlog / span, 1) if span > 0 else None,
        "jobs": jobs,
        "rate": rate,
        "terminal_to_first_attempt_ms": latency_summary([r[2] for r in rows]),
        "terminal_to_receiver_ms": latency_summary(to_receiver),
        "attempt_latency_ms": latency_summary([float(r[0]) for r in latencies]),
        "received": len(receiver.deliveries),
        "duplicates": duplicates,
    }


def report(figures: dict[str, Any]) -> str:
    first, arrival = figures["terminal_to_first_attempt_ms"], figures["terminal_to_receiver_ms"]
    return "\n".join(
        [
            f"webhooks: {figures['backlog']} waiting deliveries sent at "
            f"{figures['deliveries_per_second']} deliveries/s (one serve process, "
            f"{figures['concurrency_per_endpoint']} in flight per endpoint)",
            f"  {figures['jobs']} jobs at {figures['rate']:g}/s: terminal write -> first attempt "
            f"p50 {first['p50_ms']:.1f} ms, p99 {first['p99_ms']:.1f} ms "
            f"(goal <= {GOAL_P50_MS:g} / {GOAL_P99_MS:g}); -> at the receiver "
            f"p50 {arrival['p50_ms']:.1f} ms, p99 {arrival['p99_ms']:.1f} ms",
            f"  {figures['received']} deliveries received, {figures['duplicates']} duplicates",
        ]
    )


async def run(
    url: str,
    work: Path,
    procs: Processes,
    backlog: int,
    jobs: int,
    rate: float,
    per_endpoint: int,
) -> dict[str, Any]:
    upstream_url, _ = procs.start_upstream("webhooks-upstream", work / "upstream.port", 0.0)
    with Receiver() as receiver:
        port = free_port()
        keyless, keyed = (
            gateway_config(
                work / f"webhooks-{name}.toml",
                port=port,
                database_url=url,
                upstream_url=upstream_url,
                extra={
                    "webhooks": {
                        "allow_http": True,
                        "allow_private_networks": True,
                        "concurrency_per_endpoint": per_endpoint,
                        **key,
                    }
                },
            )
            for name, key in (
                ("keyless", {}),
                ("keyed", {"secret_key": "bench-webhook-secret-key-0123456789"}),
            )
        )
        cli(keyed, "create", HOOK, receiver.url)
        return await measure(
            url, procs, (keyless, keyed), port, receiver, backlog, jobs, rate, per_endpoint
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument(
        "--per-endpoint", type=int, default=8, help="webhooks.concurrency_per_endpoint"
    )
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), type=Path)
    args = parser.parse_args(argv)
    out: Path = args.out

    async def scenario(url: str, work: Path, procs: Processes) -> dict[str, Any]:
        return await run(url, work, procs, args.backlog, args.jobs, args.rate, args.per_endpoint)

    figures = run_scenario("asyncgate-webhooks-", args.database_url, out, scenario)
    first = figures["terminal_to_first_attempt_ms"]
    figures["passed"] = first["p50_ms"] <= GOAL_P50_MS and first["p99_ms"] <= GOAL_P99_MS
    (out / "webhooks.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(report(figures), flush=True)
    say(f"{'goal met' if figures['passed'] else 'goal missed'}; figures in {out / 'webhooks.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
