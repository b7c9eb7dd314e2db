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
import psycopg

from bench.children import Processes, gateway_config
from bench.loadgen import CHAT_PATH, chat_request
from bench.machine import CpuMeter, watch_postgres
from bench.report import say
from bench.scenarios import per_job_text
from tests.launch import free_port

CONNECTIONS = 64
LAYOUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "api": ("api", {}),
    "serve_one_process": ("serve", {"serve_processes": 1, "serve_worker_process": False}),
    "serve": ("serve", {}),
}

_LUA = """
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
{body}
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


class Layouts:
    """The layouts one after the other, on one database and one fake upstream."""

    def __init__(
        self, procs: Processes, work: Path, database_url: str, upstream_url: str, seconds: float
    ) -> None:
        self.procs = procs
        self.work = work
        self.database_url = database_url
        self.upstream_url = upstream_url
        self.seconds = seconds
        body = work / "layouts-body.json"
        body.write_bytes(orjson.dumps(chat_request()))
        self.post = work / "layouts-post.lua"
        self.post.write_text(
            _LUA.format(
                method="POST",
                body=f'local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()',
            )
        )

    async def _sql(self, statement: str) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            cur = await conn.execute(statement)
            return await cur.fetchall() if cur.description else []

    async def _start(self, name: str, command: str, server: dict[str, Any]) -> tuple[str, Any]:
        port = free_port()
        path = gateway_config(
            self.work / f"layout-{name}.toml",
            port=port,
            database_url=self.database_url,
            upstream_url=self.upstream_url + "/v1",
            extra={"server": {"host": "127.0.0.1", "port": port, **server}},
        )
        proc = self.procs.start_gateway(f"layout-{name}", path, command)
        url = f"http://127.0.0.1:{port}"
        await self.procs.wait_http(url, proc)
        await asyncio.sleep(3.0 if command == "serve" else 0.5)  # every process is up
        return url, proc

    async def _wrk(self, url: str, lua: Path | None, seconds: float) -> dict[str, Any]:
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

    async def _completed(self) -> int:
        rows = await self._sql("SELECT count(*) FROM async_jobs WHERE status = 'completed'")
        return int(rows[0][0])

    async def submit(self, name: str, url: str, proc: Any, end_to_end: bool) -> dict[str, Any]:
        await self._wrk(url + CHAT_PATH, self.post, 2.0)  # warm-up
        while end_to_end and await self._pending():
            await asyncio.sleep(0.1)
        if proc is not None and name != "baseline":
            await self._sql("TRUNCATE async_jobs CASCADE")
        say(f"layouts: {name}, wrk {CONNECTIONS} connections for {self.seconds:g}s")
        with CpuMeter(proc) as cpu:
            started = time.perf_counter()
            result = await self._wrk(url + CHAT_PATH, self.post, self.seconds)
            if end_to_end:
                while await self._completed() < result["ok"]:
                    await asyncio.sleep(0.02)
                elapsed = time.perf_counter() - started
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

    async def _pending(self) -> bool:
        rows = await self._sql("SELECT count(*) FROM async_jobs WHERE status <> 'completed'")
        return int(rows[0][0]) > 0

    async def poll(self, name: str, url: str, proc: Any, job_id: str) -> dict[str, Any]:
        target = f"{url}{CHAT_PATH}/{job_id}"
        await self._wrk(target, None, 1.0)
        with CpuMeter(proc) as cpu:
            result = await self._wrk(target, None, self.seconds)
        result["cpu"] = cpu.figures
        result["cpu_us"] = cpu.per_job_us(result["ok"])
        say(
            f"  poll {name}: {result['per_second']:.0f} polls/s, p99 {result['p99_ms']:.1f} ms; "
            f"{per_job_text(result['cpu_us'])}"
        )
        return result

    async def run(self, baseline_url: str, baseline: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"connections": CONNECTIONS, "seconds": self.seconds}
        api_url = ""
        api_proc = None
        for name, (command, server) in LAYOUTS.items():
            url, proc = await self._start(name, command, server)
            out[name] = await self.submit(name, url, proc, end_to_end=command == "serve")
            if name == "api":
                api_url, api_proc = url, proc
            else:
                self.procs.stop(proc)
        rows = await self._sql("SELECT id FROM async_jobs WHERE status = 'completed' LIMIT 1")
        job_id = str(rows[0][0])
        out["baseline"] = await self.submit("baseline", baseline_url, baseline, False)
        out["poll_api"] = await self.poll("api", api_url, api_proc, job_id)
        out["poll_baseline"] = await self.poll("baseline", baseline_url, baseline, job_id)
        self.procs.stop(api_proc)
        return out


async def measure(bench: Any, seconds: float) -> dict[str, Any] | None:
    """The scenario inside ``bench.run`` (``bench`` is its :class:`bench.scenarios.Bench`)."""
    if not wrk_available():
        say("layouts: skipped (wrk is not installed: apt-get install wrk)")
        return None
    port = free_port()
    baseline = bench.procs.start("layout-baseline", "-m", "bench.baseline", "--port", str(port))
    baseline_url = f"http://127.0.0.1:{port}"
    await bench.procs.wait_http(baseline_url, baseline)
    upstream, upstream_proc = bench.procs.start_upstream(
        "layout-upstream", bench.work / "layout-upstream.port", 0.0
    )
    try:
        layouts = Layouts(bench.procs, bench.work, bench.database_url, upstream, seconds)
        return await layouts.run(baseline_url, baseline)
    finally:
        bench.procs.stop(baseline, upstream_proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layouts", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    from bench.harness import run_alone
    from bench.scenarios import Bench, Plan

    async def scenario(url: str, work: Path, procs: Processes) -> dict[str, Any] | None:
        await watch_postgres(url)
        bench = Bench(Plan.make(False, 1000), procs, work, url, {"machine": {}})
        return await measure(bench, args.seconds)

    run_alone("layouts", args.database_url, args.out, scenario)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
