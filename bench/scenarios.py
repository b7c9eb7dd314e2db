"""The benchmark scenarios (see bench/README.md), run one after the other by :class:`Bench`.

1. submit throughput and latency (plain and with Idempotency-Key), 2. pickup latency,
3. end-to-end jobs/s, 4. many slow jobs in flight, 5. polls/s. Each scenario starts the gateway
processes it needs, measures with the load generator (which runs in this process) and stores
its figures in ``results``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg

from bench.children import Processes, gateway_config, wait_until
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
from bench.machine import CpuMeter, watch_postgres
from bench.report import say
from tests.launch import free_port

CLIENTS = 64
"""Concurrent clients of the closed-loop scenarios."""


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
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """A CHECKPOINT, so that a measurement does not pay for the writes before it (skipped
        where the user may not run one)."""
        with contextlib.suppress(psycopg.Error):
            await self.sql("CHECKPOINT")

    async def counts(self) -> tuple[int, int]:
        rows = await self.sql(
            "SELECT count(*) FILTER (WHERE status = 'completed'),"
            " count(*) FILTER (WHERE status = 'failed') FROM async_jobs"
        )
        return int(rows[0][0]), int(rows[0][1])

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

    async def start_gateway(
        self,
        name: str,
        mode: str,
        upstream: str,
        extra: dict[str, dict[str, Any]] | None = None,
        **config: int,
    ) -> tuple[str, subprocess.Popen[bytes]]:
        """A gateway process in ``mode``, once it answers HTTP and (but for ``api``) its
        worker listens; ``extra`` and ``config`` go to :func:`gateway_config`."""
        port = free_port()
        path = gateway_config(
            self.work / f"{name}.toml",
            port=port,
            database_url=self.database_url,
            upstream_url=upstream + "/v1",
            extra=extra,
            **config,
        )
        since = (await self.sql("SELECT clock_timestamp()"))[0][0]
        proc = self.procs.start_gateway(name, path, mode)
        url = f"http://127.0.0.1:{port}"
        if mode != "worker":
            await self.procs.wait_http(url, proc)
        if mode != "api":
            await self.wait_listener(proc, since)
        return url, proc

    def submit_call(self, url: str, *, idempotent: bool = False) -> Call:
        return Call("POST", url + CHAT_PATH, 202, self.body, idempotent=idempotent)

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
        await self.reset_jobs()
        # The same process and table state, every request with a new Idempotency-Key.
        idempotent = await self._measure(
            "submit: gateway api, Idempotency-Key", self.submit_call(url, idempotent=True), proc
        )
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
        say(f"submit: group commit with Idempotency-Keys (no HTTP), {CLIENTS} submitters")
        idem_cpu = CpuMeter()
        grouped_idem = await group_commits(
            self.database_url,
            self.request,
            duration=plan.duration,
            submitters=CLIENTS,
            meter=idem_cpu,
            idempotent=True,
        )
        self._show("group commit, Idempotency-Key", grouped_idem, idem_cpu)
        await self.reset_jobs()
        self.scenarios["submit"] = {
            "clients": CLIENTS,
            "body_bytes": len(self.body),
            "seconds": plan.duration,
            "gateway_api": gateway,
            "gateway_api_idempotent": idempotent,
            "baseline": baseline,
            "raw_insert": raw_insert,
            "group_commit": {**grouped.summary(), "cpu": cpu.figures},
            "group_commit_idempotent": {**grouped_idem.summary(), "cpu": idem_cpu.figures},
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
        return {**stats.summary(), "cpu": cpu.figures, "cpu_us": cpu.per_job_us(stats.ok)}

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
            "cpu_us": cpu.per_job_us(stats.ok),
        }
        say(
            f"  {label}: {result['jobs_per_second']:.0f} jobs/s end to end "
            f"({stats.ok} in {elapsed:.2f}s; submitting took {stats.elapsed:.2f}s; "
            f"{result['failed']} failed)"
        )
        say(f"    {cpu.text()}; {per_job_text(result['cpu_us'])}")
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
        upstream, upstream_proc = self.procs.start_upstream(
            "upstream-slow", self.work / "upstream-slow.port", plan.inflight_latency
        )
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
        say(f"    {cpu.text()}; {per_job_text(cpu.per_job_us(stats.ok))}")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The bench's database connection for a block; opened for it if closed (:meth:`run`
        closes its own, and scenarios run after it need one)."""
        if self.db is not None and not self.db.closed:
            yield self.db
            return
        self.db = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        try:
            yield self.db
        finally:
            await self.db.close()

    async def open(self) -> None:
        """The run's database connection, its PostgreSQL's version and CPU meter, and the
        zero-latency upstream; :meth:`run` and other scenarios on this bench start here."""
        self.db = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        rows = await self.sql("SELECT version()")
        self.results["machine"]["postgresql"] = rows[0][0]
        self.upstream_url, self._upstream = self.procs.start_upstream(
            "upstream", self.work / "upstream.port", 0.0
        )
        await watch_postgres(self.database_url)

    @classmethod
    @contextlib.asynccontextmanager
    async def alone(
        cls, quick: bool, procs: Processes, work: Path, database_url: str
    ) -> AsyncIterator[Bench]:
        """A bench for one scenario run on its own (``python -m bench.NAME``), opened (see
        :meth:`open`); its connection is closed after the block."""
        bench = cls(Plan.make(quick, 1000), procs, work, database_url, {"machine": {}})
        await bench.open()
        try:
            yield bench
        finally:
            assert bench.db is not None
            await bench.db.close()

    async def run(self) -> None:
        await self.open()
        assert self.db is not None
        try:
            port = free_port()
            baseline = self.procs.start("baseline", "-m", "bench.baseline", "--port", str(port))
            self._baseline = baseline
            self.baseline_url = f"http://127.0.0.1:{port}"
            await self.procs.wait_http(self.baseline_url, baseline)
            await self.submit()
            await self.pickup()
            api_url = await self.end_to_end()
            await self.poll(api_url)
            self.procs.stop(baseline)
            await self.in_flight()
        finally:
            await self.db.close()


def per_job_text(per_job: dict[str, float]) -> str:
    """CPU microseconds per job by group, as printed."""
    return "CPU per job: " + ", ".join(f"{k} {v:.0f} us" for k, v in per_job.items())


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
