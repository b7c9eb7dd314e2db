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
