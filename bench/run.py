"""Run every benchmark scenario in one go and report the figures against the goals.

    .venv/bin/python -m bench.run [--quick] [--database-url URL] [--out bench/results]

Everything is started here and stopped on the way out, whatever happens: PostgreSQL (embedded
in a temporary directory unless ``--database-url`` names a server whose user may create
databases; a fresh database is created, migrated and dropped), the fake upstream, the gateway
processes (``asyncgate serve|api|worker``), the baseline app, and the load generator, which
runs in this process. All traffic stays on 127.0.0.1. See bench/README.md for the scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import heapq
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import psycopg
import uvloop

from bench import chart
from bench.loadgen import (
    CHAT_PATH,
    Call,
    RunStats,
    chat_request,
    client_session,
    closed_loop,
    group_commits,
    latency_summary,
    open_loop,
    raw_inserts,
)

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-bench-upstream"
CLIENTS = 64
NOTES = [
    "Load generator, servers and PostgreSQL share one machine "
    "(the load generator runs in the benchmark process and competes for the same cores); "
    "'other' is CPU used meanwhile by unrelated processes on the host.",
    "Pickup latency can be negative: the worker may call the upstream before the client has "
    "read its 202 (both are after the commit).",
]


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of one run."""

    quick: bool
    duration: float
    warmup: float
    pickup_rate: float
    pickup_duration: float
    e2e_jobs: int
    inflight_jobs: int
    inflight_latency: float
    inflight_clients: int
    worker_concurrency: int

    @staticmethod
    def make(quick: bool, worker_concurrency: int) -> Plan:
        return Plan(
            quick=quick,
            duration=3.0 if quick else 10.0,
            warmup=0.5 if quick else 1.0,
            pickup_rate=200.0,
            pickup_duration=3.0 if quick else 10.0,
            e2e_jobs=1000 if quick else 5000,
            inflight_jobs=2000,
            inflight_latency=2.0,
            inflight_clients=CLIENTS,
            worker_concurrency=worker_concurrency,
        )


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (host, socket and credentials kept)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **info)


# --- processes ---------------------------------------------------------------------------------


class Processes:
    """Child processes of this run, each logging to its own file; all are stopped by ``close``."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((name, proc))
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        name = next((n for n, p in self.children if p is proc), "?")
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"{name} log ({path}):\n" + "\n".join(text.splitlines()[-lines:])

    def check(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}\n{self.log_tail(proc)}")

    def stop(self, *procs: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        """SIGTERM each (graceful stop); SIGKILL whatever still runs after ``timeout`` seconds."""
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.children = [(n, p) for n, p in self.children if p not in procs]

    def close(self) -> None:
        self.stop(*(p for _, p in reversed(self.children)), timeout=10.0)


def child_environment() -> dict[str, str]:
    """This environment minus settings the gateway would read instead of its config file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ASYNCGATE_") and k != "DATABASE_URL"
    }
    env["BENCH_UPSTREAM_KEY"] = UPSTREAM_KEY
    env["PYTHONPATH"] = str(ROOT)
    return env


def gateway_config(
    path: Path,
    *,
    port: int,
    database_url: str,
    upstream_url: str,
    worker_concurrency: int = 1000,
    provider_concurrency: int = 64,
) -> Path:
    def q(value: str) -> str:
        return json.dumps(value)

    path.write_text(
        f"""log_level = "WARNING"

[server]
host = "127.0.0.1"
port = {port}

[database]
url = {q(database_url)}
pool_size = 10

[worker]
concurrency = {worker_concurrency}
shutdown_grace_seconds = 2.0

[sweeper]
interval_seconds = 3600.0

[providers.fake]
base_url = {q(upstream_url)}
api_key_env = "BENCH_UPSTREAM_KEY"
timeout = 30.0
max_concurrency = {provider_concurrency}
"""
    )
    return path


async def wait_until(
    predicate: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; RuntimeError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


class CpuMeter:
    """CPU used while a block runs, in cores (1.0 = one core busy for the whole block).

    Groups: this process (the load generator), the gateway or baseline processes, the upstream,
    PostgreSQL (the postmaster and its children, when it runs here) and ``other``: whatever else
    kept the machine busy meanwhile (other programs on the host).
    """

    postmaster: psutil.Process | None = None

    def __init__(
        self,
        *servers: subprocess.Popen[bytes],
        upstream: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._groups = {
            "loadgen": [psutil.Process()],
            "server": [psutil.Process(p.pid) for p in servers],
            "upstream": [psutil.Process(upstream.pid)] if upstream else [],
        }
        self.figures: dict[str, float] = {}

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)

    def _snapshot(self) -> dict[str, dict[int, float]]:
        groups = dict(self._groups)
        if self.postmaster is not None:
            with contextlib.suppress(psutil.Error):
                groups["postgres"] = [self.postmaster, *self.postmaster.children()]
        snapshot: dict[str, dict[int, float]] = {}
        for name, procs in groups.items():
            snapshot[name] = {}
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    snapshot[name][proc.pid] = times.user + times.system
        return snapshot

    def __enter__(self) -> CpuMeter:
        self._start = time.perf_counter()
        self._machine = self._busy()
        self._before = self._snapshot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall = time.perf_counter() - self._start
        machine = (self._busy() - self._machine) / wall
        after = self._snapshot()
        figures = {}
        for name, used in after.items():
            before = self._before.get(name, {})
            figures[name] = sum(t - before.get(pid, 0.0) for pid, t in used.items()) / wall
        figures["other"] = max(0.0, machine - sum(figures.values()))
        figures["machine"] = machine
        self.figures = {k: round(v, 2) for k, v in figures.items()}

    def text(self) -> str:
        return "cores: " + ", ".join(f"{k} {v:.2f}" for k, v in self.figures.items())


# --- the run -----------------------------------------------------------------------------------


class Bench:
    """The scenarios, sharing one database, one upstream, one baseline and one log directory."""

    def __init__(
        self, plan: Plan, procs: Processes, work: Path, database_url: str, results: dict[str, Any]
    ) -> None:
        self.plan = plan
        self.procs = procs
        self.work = work
        self.database_url = database_url
        self.results = results
        self.scenarios: dict[str, Any] = results.setdefault("scenarios", {})
        self.request = chat_request()
        self.body = orjson.dumps(self.request)
        self.db: psycopg.AsyncConnection[Any] | None = None
        self.upstream_url = ""
        self.baseline_url = ""
        self._e2e_api: subprocess.Popen[bytes] | None = None
        self._baseline: subprocess.Popen[bytes] | None = None
        self._upstream: subprocess.Popen[bytes] | None = None

    # helpers

    async def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        assert self.db is not None
        cur = await self.db.execute(statement, params or None)
        return await cur.fetchall() if cur.description else []

    async def reset_jobs(self) -> None:
        """Empty the job table and checkpoint, so each scenario starts from the same state."""
        await self.sql("TRUNCATE async_jobs CASCADE")
        with contextlib.suppress(psycopg.Error):
            await self.sql("CHECKPOINT")

    async def counts(self) -> tuple[int, int]:
        rows = await self.sql(
            "SELECT count(*) FILTER (WHERE status = 'completed'),"
            " count(*) FILTER (WHERE status = 'failed') FROM async_jobs"
        )
        return int(rows[0][0]), int(rows[0][1])

    async def wait_http(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                self.procs.check(proc)
                try:
                    async with session.get(url + "/health") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(healthy, 60, f"{url}/health")

    async def wait_listener(self, proc: subprocess.Popen[bytes], since: Any) -> None:
        """Until a connection opened after ``since`` LISTENs here: its claim loop runs."""

        async def listening() -> bool:
            self.procs.check(proc)
            rows = await self.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN %%' AND backend_start >= %s",
                since,
            )
            return int(rows[0][0]) > 0

        await wait_until(listening, 60, "the worker to listen")

    def start_upstream(self, name: str, latency: float) -> tuple[str, subprocess.Popen[bytes]]:
        port_file = self.work / f"{name}.port"
        proc = self.procs.start(
            name,
            "-m",
            "tests.upstream",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--latency",
            str(latency),
            "--api-key",
            UPSTREAM_KEY,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            self.procs.check(proc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start\n{self.procs.log_tail(proc)}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{int(port_file.read_text())}", proc

    async def start_gateway(
        self, name: str, mode: str, upstream: str, **config: int
    ) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        path = gateway_config(
            self.work / f"{name}.toml",
            port=port,
            database_url=self.database_url,
            upstream_url=upstream + "/v1",
            **config,
        )
        since = (await self.sql("SELECT clock_timestamp()"))[0][0]
        proc = self.procs.start(name, "-m", "asyncgate", "--config", str(path), mode)
        url = f"http://127.0.0.1:{port}"
        if mode != "worker":
            await self.wait_http(url, proc)
        if mode != "api":
            await self.wait_listener(proc, since)
        return url, proc

    def submit_call(self, url: str) -> Call:
        return Call("POST", url + CHAT_PATH, 202, self.body)

    async def drain(self, accepted: int, before: tuple[int, int], timeout: float) -> float:
        """Wait until ``accepted`` more jobs are terminal; returns ``time.perf_counter()`` then."""

        async def done() -> float | None:
            completed, failed = await self.counts()
            finished = completed - before[0] + failed - before[1]
            return time.perf_counter() if finished >= accepted else None

        return float(await wait_until(done, timeout, f"{accepted} jobs to finish", 0.02))

    # scenarios

    async def submit(self) -> None:
        """1. Submit throughput and latency: gateway ``api`` vs baseline app vs raw inserts vs
        the same rows through the group committer (no HTTP)."""
        plan = self.plan
        await self.reset_jobs()
        url, proc = await self.start_gateway("submit-api", "api", self.upstream_url)
        gateway = await self._measure("submit: gateway api", self.submit_call(url), proc)
        self.procs.stop(proc)
        baseline = await self._measure(
            "submit: baseline", self.submit_call(self.baseline_url), self._baseline
        )
        await self.reset_jobs()
        say(f"submit: raw single-row inserts, {CLIENTS} inserters, 8 connections")
        cpu = CpuMeter()
        raw = await raw_inserts(
            self.database_url, self.request, duration=plan.duration, inserters=CLIENTS, meter=cpu
        )
        self._show("raw insert", raw, cpu)
        raw_insert = {**raw.summary(), "cpu": cpu.figures}
        await self.reset_jobs()
        say(f"submit: group commit (no HTTP), {CLIENTS} submitters, 8 connections")
        cpu = CpuMeter()
        grouped = await group_commits(
            self.database_url, self.request, duration=plan.duration, submitters=CLIENTS, meter=cpu
        )
        self._show("group commit", grouped, cpu)
        await self.reset_jobs()
        self.scenarios["submit"] = {
            "clients": CLIENTS,
            "body_bytes": len(self.body),
            "seconds": plan.duration,
            "gateway_api": gateway,
            "baseline": baseline,
            "raw_insert": raw_insert,
            "group_commit": {**grouped.summary(), "cpu": cpu.figures},
        }

    async def _measure(
        self, label: str, call: Call, server: subprocess.Popen[bytes] | None, unit: str = "req"
    ) -> dict[str, Any]:
        """``CLIENTS`` clients repeating ``call`` for the planned time, after a short warm-up."""
        plan = self.plan
        async with client_session(CLIENTS) as session:
            await closed_loop(session, call, concurrency=CLIENTS, duration=plan.warmup)
            say(f"{label}, {CLIENTS} clients for {plan.duration:g}s")
            with CpuMeter(*([server] if server else [])) as cpu:
                stats = await closed_loop(
                    session, call, concurrency=CLIENTS, duration=plan.duration
                )
        self._show(label.split(": ", 1)[-1], stats, cpu, unit)
        return {**stats.summary(), "cpu": cpu.figures}

    async def pickup(self) -> None:
        """2. From the client's 202 to the upstream's arrival, at a steady submit rate."""
        plan = self.plan
        await self.reset_jobs()
        url, proc = await self.start_gateway("pickup-serve", "serve", self.upstream_url)
        receipts: dict[str, float] = {}

        def record(payload: bytes, at: float) -> None:
            receipts[orjson.loads(payload)["id"]] = at

        async with client_session(CLIENTS) as session:
            call = self.submit_call(url)
            warm = await closed_loop(session, call, concurrency=8, count=100)
            await self.drain(warm.ok, (0, 0), 30)
            before = await self.counts()
            say(f"pickup: {plan.pickup_rate:g} submits/s for {plan.pickup_duration:g}s (serve)")
            with CpuMeter(proc, upstream=self._upstream) as cpu:
                stats = await open_loop(
                    session,
                    call,
                    rate=plan.pickup_rate,
                    duration=plan.pickup_duration,
                    on_answer=record,
                )
            await self.drain(stats.ok, before, 60)
            async with session.get(self.upstream_url + "/_upstream/stats") as response:
                arrivals: dict[str, list[float]] = (await response.json())["arrivals"]
        self.procs.stop(proc)
        delays = [arrivals[i][0] - t for i, t in receipts.items() if arrivals.get(i)]
        summary = latency_summary(delays)
        summary["min_ms"] = min(delays) * 1000 if delays else float("nan")
        self.scenarios["pickup"] = {
            "rate": plan.pickup_rate,
            "seconds": plan.pickup_duration,
            "accepted": stats.ok,
            "matched": len(delays),
            "submit": stats.summary(),
            **summary,
            "cpu": cpu.figures,
        }
        say(
            f"  pickup p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms "
            f"({len(delays)} jobs; submit p99 {stats.summary()['p99_ms']:.1f} ms)"
        )
        say(f"    {cpu.text()}")

    async def end_to_end(self) -> str:
        """3. Jobs/s from submit to completed, ``serve`` and ``api`` + ``worker``.

        Leaves the ``api`` process of the second run up (its worker stopped) for the poll
        scenario; returns its URL.
        """
        out: dict[str, Any] = {}
        await self.reset_jobs()
        url, proc = await self.start_gateway("e2e-serve", "serve", self.upstream_url)
        out["serve"] = await self._e2e_load("serve", url, proc)
        self.procs.stop(proc)
        await self.reset_jobs()
        api_url, api = await self.start_gateway("e2e-api", "api", self.upstream_url)
        _, worker = await self.start_gateway("e2e-worker", "worker", self.upstream_url)
        out["api_worker"] = await self._e2e_load("api + worker", api_url, api, worker)
        self.procs.stop(worker)
        self.scenarios["end_to_end"] = out
        self._e2e_api = api
        return api_url

    async def _e2e_load(
        self, label: str, url: str, *servers: subprocess.Popen[bytes]
    ) -> dict[str, Any]:
        jobs = self.plan.e2e_jobs
        async with client_session(CLIENTS) as session:
            call = self.submit_call(url)
            warm = await closed_loop(session, call, concurrency=CLIENTS, count=200)
            await self.drain(warm.ok, (0, 0), 30)
            before = await self.counts()
            say(f"end to end: {jobs} jobs, {CLIENTS} clients ({label})")
            with CpuMeter(*servers, upstream=self._upstream) as cpu:
                start = time.perf_counter()
                stats = await closed_loop(session, call, concurrency=CLIENTS, count=jobs)
                end = await self.drain(stats.ok, before, 120)
        _, failed = await self.counts()
        elapsed = end - start
        result = {
            "jobs": stats.ok,
            "failed": failed - before[1],
            "seconds": round(elapsed, 3),
            "jobs_per_second": stats.ok / elapsed,
            "submit_phase": stats.summary(),
            "cpu": cpu.figures,
        }
        say(
            f"  {label}: {result['jobs_per_second']:.0f} jobs/s end to end "
            f"({stats.ok} in {elapsed:.2f}s; submitting took {stats.elapsed:.2f}s; "
            f"{result['failed']} failed)"
        )
        say(f"    {cpu.text()}")
        return result

    async def poll(self, api_url: str) -> None:
        """5. Polls/s of one completed job, gateway ``api`` vs the baseline's fixed answer."""
        plan = self.plan
        rows = await self.sql("SELECT id FROM async_jobs WHERE status = 'completed' LIMIT 1")
        job_id = str(rows[0][0])
        sizes: dict[str, int] = {}
        out: dict[str, Any] = {"clients": CLIENTS, "seconds": plan.duration}
        servers = (("gateway", api_url, self._e2e_api), ("baseline", self.baseline_url, None))
        for label, url, server in servers:
            call = Call("GET", f"{url}{CHAT_PATH}/{job_id}", 200)
            async with client_session(1) as session, session.get(call.url) as response:
                sizes[label] = len(await response.read())
            out[label] = await self._measure(
                f"poll: {label}", call, server or self._baseline, "polls"
            )
        out["body_bytes"] = sizes
        if self._e2e_api is not None:
            self.procs.stop(self._e2e_api)
        self.scenarios["poll"] = out

    async def in_flight(self) -> None:
        """4. Many slow jobs at once: time to finish vs the ideal, and the worker's peak RSS."""
        plan = self.plan
        concurrency = plan.worker_concurrency
        upstream, upstream_proc = self.start_upstream("upstream-slow", plan.inflight_latency)
        await self.reset_jobs()
        config = {"worker_concurrency": concurrency, "provider_concurrency": concurrency}
        url, api = await self.start_gateway("inflight-api", "api", upstream, **config)
        _, worker = await self.start_gateway("inflight-worker", "worker", upstream, **config)
        process = psutil.Process(worker.pid)
        idle_rss = process.memory_info().rss
        peak = idle_rss
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        say(
            f"in flight: {plan.inflight_jobs} jobs at once, upstream latency "
            f"{plan.inflight_latency:g}s, worker concurrency {concurrency}"
        )
        cpu = CpuMeter(api, worker, upstream=upstream_proc)
        try:
            async with client_session(plan.inflight_clients) as session:
                with cpu:
                    start = time.perf_counter()
                    stats = await closed_loop(
                        session,
                        self.submit_call(url),
                        concurrency=plan.inflight_clients,
                        count=plan.inflight_jobs,
                    )
                    submitted = time.perf_counter()
                    end = await self.drain(stats.ok, (0, 0), 120)
        finally:
            sampling = False
            await sampler
        completed, failed = await self.counts()
        span = await self.sql(
            "SELECT extract(epoch FROM max(completed_at) - min(created_at)) FROM async_jobs"
        )
        arrivals = await self.sql(
            "SELECT extract(epoch FROM created_at - min(created_at) OVER ()) FROM async_jobs"
        )
        paced = ideal_given_arrivals(
            [float(r[0]) for r in arrivals], concurrency, plan.inflight_latency
        )
        self.procs.stop(api, worker, upstream_proc)
        ideal = plan.inflight_latency * math.ceil(plan.inflight_jobs / concurrency)
        elapsed = end - start
        self.scenarios["in_flight"] = {
            "jobs": stats.ok,
            "completed": completed,
            "failed": failed,
            "upstream_latency_s": plan.inflight_latency,
            "worker_concurrency": concurrency,
            "submit_clients": plan.inflight_clients,
            "submit_seconds": round(submitted - start, 3),
            "seconds": round(elapsed, 3),
            "after_last_submit_seconds": round(end - submitted, 3),
            "db_span_seconds": round(float(span[0][0] or 0), 3),
            "ideal_seconds": ideal,
            "ratio_to_ideal": elapsed / ideal,
            "ideal_given_submits_seconds": round(paced, 3),
            "db_span_to_ideal_given_submits": float(span[0][0] or 0) / paced if paced else None,
            "worker_idle_rss_mb": idle_rss / 2**20,
            "worker_peak_rss_mb": peak / 2**20,
            "submit": stats.summary(),
            "cpu": cpu.figures,
        }
        say(
            f"  {stats.ok} jobs done in {elapsed:.2f}s (ideal {ideal:g}s, x{elapsed / ideal:.2f}; "
            f"submitting took {submitted - start:.2f}s); worker peak RSS {peak / 2**20:.0f} MB"
        )
        say(
            f"    in the database: first accepted to last completed {float(span[0][0] or 0):.2f}s; "
            f"a perfect worker fed at the same submit times would need {paced:.2f}s"
        )
        say(f"    {cpu.text()}")

    @staticmethod
    def _show(label: str, stats: RunStats, cpu: CpuMeter, unit: str = "req") -> None:
        s = stats.summary()
        errors = f", {s['errors']} errors {s['unexpected']}" if s["errors"] else ""
        say(
            f"  {label}: {s['per_second']:.0f} {unit}/s, p50 {s['p50_ms']:.1f} ms, "
            f"p99 {s['p99_ms']:.1f} ms ({s['ok']} ok{errors})"
        )
        say(f"    {cpu.text()}")

    async def run(self) -> None:
        self.db = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        try:
            rows = await self.sql("SELECT version()")
            self.results["machine"]["postgresql"] = rows[0][0]
            self.upstream_url, self._upstream = self.start_upstream("upstream", 0.0)
            with contextlib.suppress(psutil.Error):
                rows = await self.sql("SELECT pg_backend_pid()")
                CpuMeter.postmaster = psutil.Process(psutil.Process(rows[0][0]).ppid())
            port = free_port()
            baseline = self.procs.start("baseline", "-m", "bench.baseline", "--port", str(port))
            self._baseline = baseline
            self.baseline_url = f"http://127.0.0.1:{port}"
            await self.wait_http(self.baseline_url, baseline)
            await self.submit()
            await self.pickup()
            api_url = await self.end_to_end()
            await self.poll(api_url)
            self.procs.stop(baseline)
            await self.in_flight()
        finally:
            await self.db.close()


def ideal_given_arrivals(arrivals: list[float], slots: int, latency: float) -> float:
    """Seconds from the first arrival until a perfect worker with ``slots`` slots, each job
    taking ``latency``, has finished every job arriving at ``arrivals`` (seconds, any order)."""
    free = [0.0] * slots
    finish = 0.0
    for arrival in sorted(arrivals):
        start = max(arrival, heapq.heappop(free))
        heapq.heappush(free, start + latency)
        finish = max(finish, start + latency)
    return finish - min(arrivals, default=0.0)


# --- report ------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def goals(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its measured value and whether it is met (absent scenarios are skipped).

    Entries marked ``informational`` check a claim behind the design rather than a goal.
    """
    found: list[dict[str, Any]] = []

    def goal(name: str, value: float, target: str, met: bool, informational: bool = False) -> None:
        entry = {"goal": name, "value": value, "target": target, "met": bool(met)}
        if informational:
            entry["informational"] = True
        found.append(entry)

    if s := scenarios.get("submit"):
        gw, base, raw = s["gateway_api"], s["baseline"], s["raw_insert"]
        ratio = gw["per_second"] / base["per_second"]
        goal("submit / baseline", ratio, ">= 0.80", ratio >= 0.8)
        goal("submit p99 (ms)", gw["p99_ms"], "< 50", gw["p99_ms"] < 50)
        ratio = gw["per_second"] / raw["per_second"]
        goal("submit / raw insert", ratio, "> 1.00", ratio > 1.0)
        if group := s.get("group_commit"):
            ratio = group["per_second"] / raw["per_second"]
            goal("group commit / raw insert", ratio, "> 1.00", ratio > 1.0, informational=True)
    if p := scenarios.get("pickup"):
        goal("pickup p50 (ms)", p["p50_ms"], "<= 5", p["p50_ms"] <= 5)
        goal("pickup p99 (ms)", p["p99_ms"], "<= 25", p["p99_ms"] <= 25)
    if f := scenarios.get("in_flight"):
        ratio = f["ratio_to_ideal"]
        goal("in flight / ideal", ratio, "<= 1.20", ratio <= 1.2 and f["failed"] == 0)
        rss = f["worker_peak_rss_mb"]
        goal("worker peak RSS (MB)", rss, "< 250", rss < 250)
    if q := scenarios.get("poll"):
        ratio = q["gateway"]["per_second"] / q["baseline"]["per_second"]
        goal("poll / baseline", ratio, ">= 0.80", ratio >= 0.8)
    return found


def _cores(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return ""
    keys = ("loadgen", "server", "postgres", "other")
    return "/".join(f"{cpu[k]:.2f}" if k in cpu else "-" for k in keys)


def table(results: dict[str, Any]) -> str:
    """The figures and goals as plain text."""
    s = results.get("scenarios", {})
    rows: list[list[str]] = []

    def add(name: str, figure: str, r: dict[str, Any] | None = None) -> None:
        r = r or {}
        p50, p99 = r.get("p50_ms"), r.get("p99_ms")
        rows.append(
            [
                name,
                figure,
                "" if p50 is None else f"{p50:.2f}",
                "" if p99 is None else f"{p99:.2f}",
                _cores(r.get("cpu")),
            ]
        )

    if sub := s.get("submit"):
        for key, name in (
            ("gateway_api", "submit: gateway (api)"),
            ("baseline", "submit: baseline app (no DB)"),
            ("raw_insert", "submit: raw psycopg insert"),
            ("group_commit", "submit: group commit (no HTTP)"),
        ):
            if key in sub:
                add(name, f"{sub[key]['per_second']:.0f} /s", sub[key])
    if p := s.get("pickup"):
        add(f"pickup at {p['rate']:g}/s (serve)", f"{p['matched']} jobs", p)
    if e := s.get("end_to_end"):
        for key, name in (("serve", "end to end: serve"), ("api_worker", "end to end: api+worker")):
            if key in e:
                add(name, f"{e[key]['jobs_per_second']:.0f} jobs/s", {"cpu": e[key]["cpu"]})
    if f := s.get("in_flight"):
        add(
            f"in flight: {f['jobs']} x {f['upstream_latency_s']:g}s",
            f"{f['seconds']:.2f} s (ideal {f['ideal_seconds']:g})",
            {"cpu": f["cpu"]},
        )
        add("in flight: worker peak RSS", f"{f['worker_peak_rss_mb']:.0f} MB")
    if q := s.get("poll"):
        for key, name in (("gateway", "poll: gateway (api)"), ("baseline", "poll: baseline app")):
            add(name, f"{q[key]['per_second']:.0f} /s", q[key])
    head = ["scenario", "figure", "p50 ms", "p99 ms", "cores: loadgen/server/pg/other"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    out.append("")
    g = results.get("goals", [])
    name_width = max((len(x["goal"]) for x in g), default=4)
    out.append("goals")
    for x in g:
        state = "met" if x["met"] else "NOT MET"
        if x.get("informational"):
            state += " (informational)"
        out.append(f"  {x['goal'].ljust(name_width)}  {x['value']:9.3f}  {x['target']:>7}  {state}")
    m = results.get("machine", {})
    out.append("")
    out.append(
        f"machine: {m.get('cores')} cores, {m.get('cpu_model')}, Python {m.get('python')}, "
        f"{str(m.get('postgresql', '?')).split(' on ')[0]}, load average at start "
        f"{m.get('load_average_at_start')}"
    )
    out.extend(f"note: {n}" for n in results.get("notes", []))
    others = [c["other"] for c in _cpu_figures(s) if "other" in c]
    if others and max(others) > 0.25:
        out.append(
            f"WARNING: unrelated processes kept up to {max(others):.2f} cores busy during the "
            "measurements; these figures understate what the machine can do."
        )
    return "\n".join(out)


def _cpu_figures(value: Any) -> list[dict[str, float]]:
    """Every ``cpu`` figure set found anywhere in ``value``."""
    if isinstance(value, dict):
        found = [value["cpu"]] if isinstance(value.get("cpu"), dict) else []
        for key, item in value.items():
            if key != "cpu":
                found += _cpu_figures(item)
        return found
    return []


# --- entry point -------------------------------------------------------------------------------


@contextlib.contextmanager
def database(admin_url: str | None, work: Path) -> Iterator[str]:
    """A fresh, migrated database on ``admin_url`` (or an embedded server); dropped afterwards."""
    from asyncgate.embedded import EmbeddedPostgres
    from models import migrate

    embedded = None
    if admin_url is None:
        say("starting embedded PostgreSQL")
        embedded = EmbeddedPostgres(work / "pgdata")
        admin_url = embedded.start()
    name = f"asyncgate_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = with_database(admin_url, name)
            migrate.upgrade(url)
            yield url
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        if embedded is not None:
            embedded.stop()


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), type=Path)
    parser.add_argument(
        "--worker-concurrency", type=int, default=1000, help="worker concurrency in scenario 4"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    out: Path = args.out
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    plan = Plan.make(args.quick, args.worker_concurrency)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "plan": plan.__dict__,
        "notes": NOTES,
        "complete": False,
    }
    started = time.monotonic()
    say(
        f"asyncgate benchmark ({'quick' if plan.quick else 'full'}) on "
        f"{results['machine']['cores']} cores; logs in {log_dir}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="asyncgate-bench-") as tmp:
            work = Path(tmp)
            procs = Processes(log_dir, child_environment())
            try:
                with database(args.database_url, work) as url:
                    bench = Bench(plan, procs, work, url, results)
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        runner.run(bench.run())
            finally:
                procs.close()
        results["complete"] = True
    finally:
        results["seconds"] = round(time.monotonic() - started, 1)
        results["goals"] = goals(results.get("scenarios", {}))
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        report = table(results)
        (out / "summary.txt").write_text(report + "\n")
        if results.get("scenarios"):
            chart.draw(results, out / "chart.png")
        print()
        print(report, flush=True)
        state = "done" if results["complete"] else "stopped early (partial results)"
        say(f"{state} after {results['seconds']:.0f}s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
