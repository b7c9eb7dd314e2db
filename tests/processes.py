"""Real ``asyncgate`` processes for the reliability tests.

:class:`Processes` writes TOML configurations (providers ``fake`` and ``backup`` on the test
upstream, fast worker timers), starts ``serve``, ``api`` and ``worker`` as child processes of
this interpreter, waits until they are ready and signals them. Every process it started is
killed when the block ends, whatever the test's outcome, and its log is printed so that a
failing test shows what each process said.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import requests

from tests import launch
from tests.conftest import TERMINAL, UPSTREAM_KEY, free_port, wait_for
from tests.launch import ROOT
from tests.spec_check import SpecChecker

UPSTREAM_KEY_ENV = "FAKE_UPSTREAM_API_KEY"
"""Variable that carries the upstream key into the child (named by ``api_key_env``)."""

WORKER_STARTED = re.compile(r"worker (\S+) started")
LOG_TAIL_LINES = 60

FAST_WORKER: dict[str, Any] = {
    "poll_seconds": 0.2,
    "lease_seconds": 2.0,
    "renew_seconds": 0.5,
    "retry_base_seconds": 0.01,
    "retry_max_seconds": 0.2,
    "shutdown_grace_seconds": 2.0,
}


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without settings meant for it, plus the upstream key.

    ``ASYNCGATE_*`` variables are removed because the child would read them as settings
    (and refuse the test-only ones).
    """
    return launch.child_environment(
        {UPSTREAM_KEY_ENV: UPSTREAM_KEY, "PYTHONUNBUFFERED": "1", **(extra or {})}
    )


class GatewayProcess:
    """One ``python -m asyncgate`` child; its stdout and stderr go to ``log_path``."""

    def __init__(
        self,
        command: str,
        config_path: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.command = command
        self.config_path = config_path
        self.log_path = log_path
        self.env = child_environment(env)
        self.port = port if port is not None or command == "worker" else free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        assert self.port is not None, "a worker has no HTTP port"
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def argv(self) -> list[str]:
        port = [] if self.port is None else ["--port", str(self.port)]
        return launch.gateway_argv(self.config_path, self.command, *port)

    def start(self) -> GatewayProcess:
        self.popen = launch.start_process(self.argv, self.log_path, self.env, die_with_parent=True)
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def logs(self) -> str:
        return launch.read_log(self.log_path)

    def wait_log(self, pattern: str | re.Pattern[str], timeout: float = 15.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, waiting for it to be written."""
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern

        def found() -> re.Match[str] | None:
            match = compiled.search(self.logs())
            if match is None and not self.running():
                match = compiled.search(self.logs())
                if match is None:
                    raise AssertionError(f"{self} exited without logging {compiled.pattern!r}")
            return match

        return wait_for(found, timeout=timeout, interval=0.05)

    def wait_ready(self, timeout: float = 30.0) -> GatewayProcess:
        """Worker: its "worker ... started" line; serve and api: ``GET /health`` answers 200."""
        if self.command == "worker":
            self.wait_log(WORKER_STARTED, timeout=timeout)
            return self

        def healthy() -> bool:
            if not self.running():
                raise AssertionError(f"{self} exited during start-up:\n{self.tail()}")
            try:
                return requests.get(f"{self.url}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=timeout, interval=0.05)
        return self

    def owns(self, lease_owner: str | None) -> bool:
        """Whether ``lease_owner`` (``host:pid:suffix``) names this process."""
        return lease_owner is not None and lease_owner.split(":")[1] == str(self.pid)

    def signal(self, signum: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(signum)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code (the test fails if it takes longer than ``timeout``)."""
        assert self.popen is not None
        self.signal(signal.SIGTERM)
        if self.paused:
            self.resume()
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self} still running {timeout}s after SIGTERM") from None

    def kill(self) -> int:
        """SIGKILL: the process gets no chance to clean up."""
        assert self.popen is not None
        self.signal(signal.SIGKILL)
        self.paused = False
        return self.popen.wait(10)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return launch.log_tail(self.log_path, lines)

    def __str__(self) -> str:
        pid = self.popen.pid if self.popen is not None else "-"
        return f"asyncgate {self.command} (pid {pid})"


class Processes:
    """Starts gateway processes against one database and upstream; kills them all on close."""

    def __init__(self, directory: Path, database_url: str, upstream_url: str) -> None:
        self.directory = directory
        self.database_url = database_url
        self.upstream_url = upstream_url
        self.started: list[GatewayProcess] = []
        self._configs = 0

    def config(self, **sections: Any) -> Path:
        """Write a configuration; ``sections`` override keys, e.g. ``worker={"max_attempts": 2}``.

        ``providers={"fake": {"max_concurrency": 2}}`` changes one provider's keys and
        ``log_level="DEBUG"`` sets the top-level key.
        """
        tables: dict[str, dict[str, Any]] = {
            "database": {"url": self.database_url, "pool_size": 4, "connect_timeout": 2.0},
            "worker": dict(FAST_WORKER),
            "auth": {"key_cache_seconds": 0.0},
            "sweeper": {"interval_seconds": 3600.0},
        }
        providers = {
            name: {"base_url": self.upstream_url, "api_key_env": UPSTREAM_KEY_ENV, "timeout": 10.0}
            for name in ("fake", "backup")
        }
        top: dict[str, Any] = {}
        for name, values in sections.items():
            if name == "providers":
                for provider, keys in values.items():
                    providers.setdefault(provider, {}).update(keys)
            elif isinstance(values, Mapping):
                tables.setdefault(name, {}).update(values)
            else:
                top[name] = values
        tables.update({f"providers.{name}": keys for name, keys in providers.items()})
        self._configs += 1
        return launch.write_config(self.directory / f"asyncgate-{self._configs}.toml", top, tables)

    def spawn(
        self, command: str, config: Path, *, env: Mapping[str, str] | None = None
    ) -> GatewayProcess:
        """Start a process without waiting for it to be ready."""
        index = len(self.started) + 1
        log_path = self.directory / f"{index:02d}-{command}.log"
        process = GatewayProcess(command, config, log_path, env=env)
        self.started.append(process)
        return process.start()

    def start(self, command: str, config: Path | None = None, **sections: Any) -> GatewayProcess:
        """Start a process and wait until it is ready."""
        return self.spawn(command, config or self.config(**sections)).wait_ready()

    def run_cli(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a one-shot command (``keys create NAME``, ``migrate``) to completion."""
        return subprocess.run(
            launch.gateway_argv(config, *args),
            cwd=ROOT,
            env=child_environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def start_many(self, commands: Sequence[str], config: Path) -> list[GatewayProcess]:
        """Start several processes at once (start-up overlaps), then wait for each."""
        processes = [self.spawn(command, config) for command in commands]
        for process in processes:
            process.wait_ready()
        return processes

    def close(self) -> None:
        for process in self.started:
            if process.running():
                process.kill()
        for process in self.started:
            print(f"----- {process}: {process.argv[3:]} -----\n{process.tail()}")

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Client:
    """HTTP to a gateway process; every answer is checked against the spec."""

    def __init__(self, url: str, checker: SpecChecker) -> None:
        self.url = url
        self.session = checker.session(url)

    def submit(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.session.post(f"{self.url}{path}", json=json, timeout=10, **kwargs)

    def submit_ok(self, path: str, json: Any) -> str:
        """Submit and return the job id; the submission must be accepted."""
        response = self.submit(path, json)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def poll(self, path: str, job_id: str, **kwargs: Any) -> requests.Response:
        return self.session.get(f"{self.url}{path}/{job_id}", timeout=10, **kwargs)

    def wait_terminal(
        self, path: str, job_id: str, timeout: float = 20.0, **kwargs: Any
    ) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            response = self.poll(path, job_id, **kwargs)
            assert response.status_code in (200, 202), response.text
            body: dict[str, Any] = response.json()
            return body if body["status"] in TERMINAL else None

        return wait_for(done, timeout=timeout, interval=0.05)

    def close(self) -> None:
        self.session.close()


def job_row(database_url: str, job_id: str) -> dict[str, Any]:
    """The job's row as a dict (status, attempts, lease_owner, result, error, ...)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM async_jobs WHERE id = %s", (job_id,))
        row = cur.fetchone()
        assert row is not None, f"job {job_id} has no row"
        assert cur.description is not None
        return {column.name: value for column, value in zip(cur.description, row, strict=True)}


def wait_row(
    database_url: str, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """The job's row once ``predicate`` holds for it."""

    def check() -> dict[str, Any] | None:
        row = job_row(database_url, job_id)
        return row if predicate(row) else None

    return wait_for(check, timeout=timeout, interval=0.05)
