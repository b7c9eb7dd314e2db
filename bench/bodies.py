"""Large bodies: submit throughput, latency, API memory and CPU per job with 64 KB and 1 MB
chat requests, against the gateway in ``api`` mode.

Run in the normal benchmark (``bench.run``), or alone:

    .venv/bin/python -m bench.bodies [--quick] [--database-url URL] [--out bench/results]

which writes ``bodies.json`` in the output directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.children import Processes
from bench.loadgen import CHAT_PATH, Call, chat_request, client_session, closed_loop
from bench.machine import CpuMeter
from bench.report import say
from bench.scenarios import Bench
from tests.launch import ROOT

CLIENTS = 64
SIZES = {"64k": 64 * 1024, "1m": 1024 * 1024}
"""Scenario key and the size of its request body's JSON, in bytes."""
MAX_JSON_BYTES = 2 * 1024 * 1024
UNUSED_UPSTREAM = "http://127.0.0.1:9"
"""An ``api`` process never calls its provider: nothing needs to listen there."""


class PeakRss:
    """Peak RSS of a process and its children, sampled every 100 ms while the block runs."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = psutil.Process(proc.pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def _rss(self) -> int:
        total = 0
        with contextlib.suppress(psutil.Error):
            for member in (self._proc, *self._proc.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
        return total

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._rss())
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, self._rss())


async def _one_size(
    label: str, size: int, url: str, proc: subprocess.Popen[bytes], seconds: float
) -> dict[str, Any]:
    body = orjson.dumps(chat_request(size))
    call = Call("POST", url + CHAT_PATH, 202, body)
    async with client_session(CLIENTS) as session:
        await closed_loop(session, call, concurrency=CLIENTS, duration=min(1.0, seconds / 4))
        say(f"bodies: {label} ({len(body)} bytes), {CLIENTS} clients for {seconds:g}s")
        async with PeakRss(proc) as rss:
            with CpuMeter(api=proc) as cpu:
                stats = await closed_loop(session, call, concurrency=CLIENTS, duration=seconds)
    s = stats.summary()
    per_job = cpu.per_job_us(stats.ok)
    figures = {
        **s,
        "body_bytes": len(body),
        "api_peak_rss_mb": round(rss.peak / 2**20, 1),
        "cpu": cpu.figures,
        "cpu_us": per_job,
    }
    errors = f", {s['errors']} errors {s['unexpected']}" if s["errors"] else ""
    say(
        f"  {label}: {s['per_second']:.0f} jobs/s, p50 {s['p50_ms']:.1f} ms, "
        f"p99 {s['p99_ms']:.1f} ms, API peak RSS {figures['api_peak_rss_mb']:.0f} MB, "
        f"CPU per job: API {per_job.get('api', 0):.0f} us, "
        f"PostgreSQL {per_job.get('postgres', 0):.0f} us ({s['ok']} ok{errors})"
    )
    return figures


async def measure(bench: Bench, name: str = "bodies-api") -> dict[str, Any]:
    """Each body size for a few seconds (quick: 2 s) against a fresh ``api`` process on
    ``bench``, the job table emptied before each; returns the figures by size key."""
    seconds = 2.0 if bench.plan.quick else 5.0
    figures: dict[str, Any] = {"clients": CLIENTS, "seconds": seconds}
    async with bench.connection():
        limits = {"limits": {"max_json_bytes": MAX_JSON_BYTES}}
        url, proc = await bench.start_gateway(name, "api", UNUSED_UPSTREAM, extra=limits)
        try:
            for label, size in SIZES.items():
                await bench.reset_jobs()
                figures[label] = await _one_size(label, size, url, proc, seconds)
            await bench.reset_jobs()
        finally:
            bench.procs.stop(proc)
    return figures


def main(argv: list[str] | None = None) -> int:
    from bench.harness import run_alone

    parser = argparse.ArgumentParser(prog="python -m bench.bodies", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 s per size instead of 5 s")
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), type=Path)
    args = parser.parse_args(argv)

    async def scenario(url: str, work: Path, procs: Processes) -> dict[str, Any]:
        async with Bench.alone(args.quick, procs, work, url) as bench:
            return await measure(bench)

    run_alone("bodies", args.database_url, args.out, scenario)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
