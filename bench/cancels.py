"""Cancelling running jobs: how fast the answer comes and how fast the upstream request stops.

    .venv/bin/python -m bench.cancels [--jobs 100] [--database-url URL] [--out bench/results]

One ``asyncgate serve`` process runs ``--jobs`` chat jobs against an upstream that reads each
request and never answers (a plain TCP server of this module), so every job is ``processing``
with an upstream request open. Each job is then cancelled, one after another, and two delays
are measured from the moment its cancel is sent: the cancel's own answer, and the upstream
seeing its connection closed (the worker aborting the request). Reported: p50/p99/max of both,
and how many cancels answered 200 ``cancelled``. Goal: every upstream request aborted within a
second. The figures go to ``cancels.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from asyncgate.worker.upstream import JOB_ID_HEADER
from bench.children import Processes, gateway_config, wait_until
from bench.harness import run_scenario
from bench.loadgen import CHAT_PATH, latency_summary
from bench.report import say
from tests.launch import ROOT, free_port

GOAL_ABORT_MS = 1000.0


class SilentUpstream:
    """Takes each request's head, never answers, and notes when each job's connection closes."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.closed_at: dict[str, float] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        job_id = ""
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == JOB_ID_HEADER.lower():
                job_id = value.strip()
        self.open.add(job_id)
        while await reader.read(65536):
            pass
        self.closed_at[job_id] = time.monotonic()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def measure(api_url: str, upstream: SilentUpstream, jobs: int) -> dict[str, Any]:
    body = {"model": "fake/anything", "messages": [{"role": "user", "content": "hello"}]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        ids = []
        for _ in range(jobs):
            async with session.post(f"{api_url}{CHAT_PATH}", json=body) as response:
                ids.append((await response.json())["id"])

        async def all_open() -> bool:
            return set(ids) <= upstream.open

        await wait_until(all_open, 60, "every job's upstream request to be open")
        say(f"{jobs} jobs processing with their upstream requests open; cancelling each")
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        cancelled = 0
        for job_id in ids:
            sent[job_id] = time.monotonic()
            async with session.post(f"{api_url}{CHAT_PATH}/{job_id}/cancel") as response:
                answer = await response.json()
                answered[job_id] = time.monotonic()
                cancelled += response.status == 200 and answer.get("status") == "cancelled"

        async def all_closed() -> bool:
            return set(ids) <= set(upstream.closed_at)

        await wait_until(all_closed, 30, "every upstream request to be closed")
    answer_delays = [answered[j] - sent[j] for j in ids]
    abort_delays = [max(0.0, upstream.closed_at[j] - sent[j]) for j in ids]
    return {
        "jobs": jobs,
        "cancelled": cancelled,
        "answer_ms": latency_summary(answer_delays),
        "upstream_abort_ms": latency_summary(abort_delays),
    }


def report(figures: dict[str, Any]) -> str:
    answer, abort = figures["answer_ms"], figures["upstream_abort_ms"]
    return "\n".join(
        [
            f"cancels: {figures['jobs']} processing jobs, {figures['cancelled']} answered "
            "200 cancelled",
            f"  cancel -> its answer: p50 {answer['p50_ms']:.1f} ms, p99 {answer['p99_ms']:.1f} ms",
            f"  cancel -> upstream request closed: p50 {abort['p50_ms']:.1f} ms, "
            f"p99 {abort['p99_ms']:.1f} ms, max {abort['max_ms']:.1f} ms "
            f"(goal <= {GOAL_ABORT_MS:g})",
        ]
    )


async def run(url: str, work: Path, procs: Processes, jobs: int) -> dict[str, Any]:
    upstream = SilentUpstream()
    upstream_port = await upstream.start()
    try:
        port = free_port()
        config = gateway_config(
            work / "cancels.toml",
            port=port,
            database_url=url,
            upstream_url=f"http://127.0.0.1:{upstream_port}",
            provider_concurrency=max(jobs, 1),
        )
        serve = procs.start_gateway("cancels-serve", config, "serve")
        api_url = f"http://127.0.0.1:{port}"
        await procs.wait_http(api_url, serve)
        return await measure(api_url, upstream, jobs)
    finally:
        upstream.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cancels", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), type=Path)
    args = parser.parse_args(argv)
    out: Path = args.out

    async def scenario(url: str, work: Path, procs: Processes) -> dict[str, Any]:
        return await run(url, work, procs, args.jobs)

    figures = run_scenario("asyncgate-cancels-", args.database_url, out, scenario)
    abort = figures["upstream_abort_ms"]
    figures["passed"] = figures["cancelled"] == figures["jobs"] and abort["max_ms"] <= GOAL_ABORT_MS
    (out / "cancels.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(report(figures), flush=True)
    verdict = "goal met" if figures["passed"] else "goal missed"
    say(f"{verdict}; figures in {out / 'cancels.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
