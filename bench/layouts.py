"""Process layouts under an independent load generator: wrk, a C program in its own process.

    .venv/bin/python -m bench.layouts [--seconds 10] [--database-url URL] [--out bench/results]

The in-process load generator of the other scenarios spends more CPU per request than the
gateway does, on the same two cores; here wrk (Debian's ``wrk``; the scenario is skipped
without it) sends the ~1 KB chat submit from 64 connections for ``seconds``, against:

- ``api``: one API process, no worker (submission only);
- ``serve, one process``: API, worker and sweeper in one process (``serve_processes = 1``,
  ``serve_worker_process = false``), the layout ``serve`` had before it used every core;
- ``serve``: the defaults, one API process per core and a worker process;
- the baseline app (the gateway's stack without a database, see :mod:`bench.baseline`).

For ``serve`` the clock runs on until every accepted job is completed: end-to-end jobs/s. Each
layout reports CPU per accepted job of its processes (the parent and its children) and of
PostgreSQL; then polls of one completed job against the gateway (``api``) and the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from bench.children import Processes
from bench.loadgen import CHAT_PATH, chat_request
from bench.machine import CpuMeter
from bench.report import say
from bench.scenarios import Bench, per_job_text
from tests.launch import free_port

CONNECTIONS = 64
LAYOUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "api": ("api", {}),
    "serve_one_process": ("serve", {"serve_processes": 1, "serve_worker_process": False}),
    "serve": ("serve", {}),
}

_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
"""


def post_script(body: Path) -> str:
    """A wrk script that POSTs the JSON in the file ``body``."""
    return _POST.format(body=body)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


async def run_wrk(url: str, lua: Path | None, seconds: float) -> dict[str, Any]:
    """wrk from 64 connections on ``url`` for ``seconds`` (with the ``lua`` script): requests,
    those answered 2xx or 3xx (``ok``) and their rate, p50 and p99 (ms), socket errors."""
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", url]
    if lua is not None:
        args += ["-s", str(lua)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out = (await proc.communicate())[0].decode()
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def percentile(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    ok = count - (int(bad.group(1)) if bad else 0)
    return {
        "requests": count,
        "ok": ok,
        "per_second": ok / seconds,
        "p50_ms": percentile("50"),
        "p99_ms": percentile("99"),
        "socket_errors": errors.group(1) if errors else "",
    }


class Layouts:
    """The layouts one after the other, on the bench's database and zero-latency upstream."""

    def __init__(self, bench: Bench, seconds: float) -> None:
        self.bench = bench
        self.seconds = seconds
        body = bench.work / "layouts-body.json"
        body.write_bytes(orjson.dumps(chat_request()))
        self.post = bench.work / "layouts-post.lua"
        self.post.write_text(post_script(body))

    async def submit(self, name: str, url: str, proc: Any, end_to_end: bool) -> dict[str, Any]:
        bench = self.bench
        before = await bench.counts()
        warm = await run_wrk(url + CHAT_PATH, self.post, 2.0)
        if end_to_end:
            await bench.drain(warm["ok"], before, 120)
        await bench.reset_jobs()
        say(f"layouts: {name}, wrk {CONNECTIONS} connections for {self.seconds:g}s")
        with CpuMeter(proc) as cpu:
            started = time.perf_counter()
            result = await run_wrk(url + CHAT_PATH, self.post, self.seconds)
            if end_to_end:
                elapsed = await bench.drain(result["ok"], (0, 0), 120) - started
                result["jobs_per_second"] = result["ok"] / elapsed
                result["seconds_to_complete"] = round(elapsed, 3)
        result["cpu"] = cpu.figures
        result["cpu_us"] = cpu.per_job_us(result["ok"])
        e2e = f", {result['jobs_per_second']:.0f} jobs/s end to end" if end_to_end else ""
        say(
            f"  {name}: {result['per_second']:.0f} submits/s{e2e}, p50 {result['p50_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms; {per_job_text(result['cpu_us'])}"
        )
        return result

    async def poll(self, name: str, url: str, proc: Any, job_id: str) -> dict[str, Any]:
        target = f"{url}{CHAT_PATH}/{job_id}"
        await run_wrk(target, None, 1.0)
        with CpuMeter(proc) as cpu:
            result = await run_wrk(target, None, self.seconds)
        result["cpu"] = cpu.figures
        result["cpu_us"] = cpu.per_job_us(result["ok"])
        say(
            f"  poll {name}: {result['per_second']:.0f} polls/s, p99 {result['p99_ms']:.1f} ms; "
            f"{per_job_text(result['cpu_us'])}"
        )
        return result

    async def run(self, baseline_url: str, baseline: Any) -> dict[str, Any]:
        bench = self.bench
        out: dict[str, Any] = {"connections": CONNECTIONS, "seconds": self.seconds}
        out["baseline"] = await self.submit("baseline", baseline_url, baseline, False)
        api: tuple[str, Any] | None = None
        for name, (command, server) in LAYOUTS.items():
            url, proc = await bench.start_gateway(
                f"layout-{name}", command, bench.upstream_url, extra={"server": server}
            )
            out[name] = await self.submit(name, url, proc, end_to_end=command == "serve")
            if name == "api":
                api = url, proc
            else:
                bench.procs.stop(proc)
        assert api is not None
        rows = await bench.sql("SELECT id FROM async_jobs WHERE status = 'completed' LIMIT 1")
        job_id = str(rows[0][0])
        out["poll_api"] = await self.poll("api", *api, job_id)
        out["poll_baseline"] = await self.poll("baseline", baseline_url, baseline, job_id)
        bench.procs.stop(api[1])
        return out


async def measure(bench: Bench, seconds: float) -> dict[str, Any] | None:
    """The scenario on ``bench`` after its :meth:`Bench.run` (its upstream still runs)."""
    if not wrk_available():
        say("layouts: skipped (wrk is not installed: apt-get install wrk)")
        return None
    port = free_port()
    baseline = bench.procs.start("layout-baseline", "-m", "bench.baseline", "--port", str(port))
    baseline_url = f"http://127.0.0.1:{port}"
    await bench.procs.wait_http(baseline_url, baseline)
    try:
        async with bench.connection():
            return await Layouts(bench, seconds).run(baseline_url, baseline)
    finally:
        bench.procs.stop(baseline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layouts", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    from bench.harness import run_alone

    async def scenario(url: str, work: Path, procs: Processes) -> dict[str, Any] | None:
        async with Bench.alone(False, procs, work, url) as bench:
            return await measure(bench, args.seconds)

    run_alone("layouts", args.database_url, args.out, scenario)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
