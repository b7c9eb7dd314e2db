"""The machine a benchmark runs on: its description and the CPU each group of processes uses."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, Python, platform, date and load average, for the results."""
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


class CpuMeter:
    """CPU used while a block runs, in cores (1.0 = one core busy for the whole block).

    Groups: this process (the load generator), the gateway or baseline processes (``server``,
    or named groups such as ``api`` and ``worker``; each with its child processes), the upstream,
    PostgreSQL (the postmaster and its backends, those that exited meanwhile included, when it
    runs here) and ``other``: whatever else kept the machine busy meanwhile (other programs on
    the host). :meth:`per_job_us` turns the figures into CPU microseconds per job.
    """

    postmaster: psutil.Process | None = None

    def __init__(
        self,
        *servers: subprocess.Popen[bytes],
        upstream: subprocess.Popen[bytes] | None = None,
        **groups: subprocess.Popen[bytes],
    ) -> None:
        self._groups = {
            "loadgen": [psutil.Process()],
            "server": [psutil.Process(p.pid) for p in servers],
            "upstream": [psutil.Process(upstream.pid)] if upstream else [],
        }
        if not servers:
            del self._groups["server"]
        for name, proc in groups.items():
            self._groups[name] = [psutil.Process(proc.pid)]
        self.figures: dict[str, float] = {}
        self.seconds = 0.0

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)

    def _snapshot(self) -> dict[str, dict[int, float]]:
        snapshot: dict[str, dict[int, float]] = {}
        for name, procs in self._groups.items():
            snapshot[name] = {}
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    for member in (proc, *proc.children(recursive=True)):
                        with contextlib.suppress(psutil.Error):
                            times = member.cpu_times()
                            snapshot[name][member.pid] = times.user + times.system
        if self.postmaster is not None:
            with contextlib.suppress(psutil.Error):
                # Backends that exited were reaped by the postmaster: their time is its
                # children's time (key 0).
                times = self.postmaster.cpu_times()
                pg = {0: times.children_user + times.children_system}
                pg[self.postmaster.pid] = times.user + times.system
                for child in self.postmaster.children():
                    with contextlib.suppress(psutil.Error):
                        t = child.cpu_times()
                        pg[child.pid] = t.user + t.system
                snapshot["postgres"] = pg
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
        self.seconds = wall
        self.figures = {k: round(v, 3) for k, v in figures.items()}

    def per_job_us(self, jobs: int) -> dict[str, float]:
        """CPU microseconds per job of each group (but ``other`` and ``machine``)."""
        if jobs <= 0:
            return {}
        return {
            name: round(cores * self.seconds / jobs * 1e6, 1)
            for name, cores in self.figures.items()
            if name not in ("other", "machine")
        }

    def text(self) -> str:
        return "cores: " + ", ".join(f"{k} {v:.2f}" for k, v in self.figures.items())


async def watch_postgres(database_url: str) -> None:
    """Have :class:`CpuMeter` count PostgreSQL's backends, when the server runs on this host."""
    if CpuMeter.postmaster is not None:
        return
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    with contextlib.suppress(psutil.Error):
        CpuMeter.postmaster = psutil.Process(psutil.Process(row[0]).ppid())
