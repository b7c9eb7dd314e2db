"""The child processes of a benchmark run and the configuration the gateway processes get.

:class:`Processes` starts each child (gateway, upstream, baseline app) with its output in a log
file of its own, waits until it is ready and stops them all on the way out;
:func:`gateway_config` writes the TOML file ``python -m asyncgate --config FILE serve|api|worker``
reads.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests import launch
from tests.launch import ROOT

UPSTREAM_KEY = "sk-bench-upstream"


class Processes:
    """Child processes of this run, each logging to its own file; all are stopped by ``close``."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``python ARGS...``; its output goes to ``NAME.log`` in the log directory."""
        return self._spawn(name, [sys.executable, *args])

    def start_gateway(self, name: str, config: Path, command: str) -> subprocess.Popen[bytes]:
        """Start ``python -m asyncgate --config CONFIG COMMAND`` (``serve``, ``api``, ...)."""
        return self._spawn(name, launch.gateway_argv(config, command))

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = launch.start_process(argv, self.log_dir / f"{name}.log", self.env)
        self.children.append((name, proc))
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        name = next((n for n, p in self.children if p is proc), "?")
        path = self.log_dir / f"{name}.log"
        return f"{name} log ({path}):\n" + launch.log_tail(path, lines)

    def check(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}\n{self.log_tail(proc)}")

    def stop(self, *procs: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        """SIGTERM each (graceful stop); SIGKILL whatever still runs after ``timeout`` seconds."""
        launch.stop_processes(procs, grace=timeout)
        self.children = [(n, p) for n, p in self.children if p not in procs]

    def close(self) -> None:
        self.stop(*(p for _, p in reversed(self.children)), timeout=10.0)

    def start_upstream(
        self, name: str, port_file: Path, latency: float
    ) -> tuple[str, subprocess.Popen[bytes]]:
        """The fake upstream answering after ``latency`` seconds; returns its URL and process."""
        proc = self.start(
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
        port = launch.read_port_file(port_file, proc, timeout=30)
        if port is None:
            self.check(proc)
            raise RuntimeError(f"{name} did not start\n{self.log_tail(proc)}")
        return f"http://127.0.0.1:{port}", proc

    async def wait_http(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        """Until ``GET {url}/health`` answers 200; RuntimeError if ``proc`` exits meanwhile."""
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                self.check(proc)
                return await launch.healthy(session, url)

            await wait_until(healthy, 60, f"{url}/health")


def child_environment() -> dict[str, str]:
    """This environment minus settings the gateway would read instead of its config file."""
    return launch.child_environment({"BENCH_UPSTREAM_KEY": UPSTREAM_KEY, "PYTHONPATH": str(ROOT)})


def gateway_config(
    path: Path,
    *,
    port: int,
    database_url: str,
    upstream_url: str,
    worker_concurrency: int = 1000,
    provider_concurrency: int = 64,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """The configuration of a gateway process on ``port`` with one provider, ``fake``, and
    the ``extra`` tables (``{"webhooks": {...}}``; keys of a table given here too are added to
    it or replace its own)."""
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port},
        "database": {"url": database_url, "pool_size": 10},
        "worker": {"concurrency": worker_concurrency, "shutdown_grace_seconds": 2.0},
        "sweeper": {"interval_seconds": 3600.0},
        "providers.fake": {
            "base_url": upstream_url,
            "api_key_env": "BENCH_UPSTREAM_KEY",
            "timeout": 30.0,
            "max_concurrency": provider_concurrency,
        },
    }
    for name, keys in (extra or {}).items():
        tables[name] = {**tables.get(name, {}), **keys}
    return launch.write_config(path, {"log_level": "WARNING"}, tables)


async def wait_until(
    predicate: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; RuntimeError at the deadline."""
    value = await launch.poll_until_async(predicate, timeout, interval)
    if not value:
        raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
    return value
