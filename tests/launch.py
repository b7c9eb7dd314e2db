"""Starting and stopping real processes of this project, shared by the tests and the benchmarks.

Free loopback ports, fresh (migrated) databases, the environment a child process gets, the TOML
configuration ``python -m asyncgate --config FILE serve|api|worker`` reads, starting a child with
its output going to a log file, waiting until it is ready and stopping it (SIGTERM, then SIGKILL
after a grace period). Nothing here depends on pytest, so ``bench`` imports it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: the working directory of every child process."""


# --- ports and databases -----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (host, socket and credentials kept)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **info)


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    """Create database ``name`` (a copy of ``template`` if given); returns its URL."""
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting whoever is still connected."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_migrated_database(admin_url: str, name: str) -> str:
    """Create database ``name`` and bring its schema up to date; returns its URL."""
    from asyncgate.models import migrate

    url = create_database(admin_url, name)
    migrate.upgrade(url)
    return url


@contextlib.contextmanager
def migrated_database(admin_url: str, name: str) -> Iterator[str]:
    """A fresh, migrated database ``name`` on ``admin_url`` for the block; dropped afterwards."""
    try:
        yield create_migrated_database(admin_url, name)
    finally:
        drop_database(admin_url, name)


# --- configuration and environment -------------------------------------------------------------


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without settings meant for it, plus ``extra``.

    ``ASYNCGATE_*`` variables and ``DATABASE_URL`` are removed because a gateway child would
    read them as settings instead of its configuration file (and refuse the test-only ones).
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("ASYNCGATE_") and name != "DATABASE_URL"
    }
    env.update(extra or {})
    return env


def toml_text(top: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document of plain keys and one level of (possibly dotted) tables."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, str):
            return json.dumps(item)  # a JSON string is a valid TOML basic string
        raise TypeError(f"cannot write {item!r} to TOML")

    lines = [f"{key} = {value(item)}" for key, item in top.items()]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {value(item)}" for key, item in table.items())
    return "\n".join(lines) + "\n"


def write_config(
    path: Path, top: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]
) -> Path:
    """Write a gateway configuration file (see :func:`toml_text`); returns ``path``."""
    path.write_text(toml_text(top, tables))
    return path


def gateway_argv(config: Path, *args: str) -> list[str]:
    """The command line ``python -m asyncgate --config CONFIG ARGS...`` (ARGS: e.g. ``serve``)."""
    return [sys.executable, "-m", "asyncgate", "--config", str(config), *args]


# --- child processes ---------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the parent dies without cleaning up."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def start_process(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    *,
    die_with_parent: bool = False,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``cwd`` (the repository root), in its own session, stdout and stderr
    appended to ``log_path``; with ``die_with_parent`` it is SIGKILLed when this process dies."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each running process (a graceful stop), wait up to ``grace`` seconds in all,
    then SIGKILL whatever still runs."""
    alive = [proc for proc in procs if proc.poll() is None]
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in alive:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def read_log(path: Path) -> str:
    """The text of a log file, '' if there is none (yet)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file."""
    return "\n".join(read_log(path).splitlines()[-lines:])


# --- waiting -----------------------------------------------------------------------------------


def poll_until(predicate: Callable[[], Any], timeout: float, interval: float) -> Any:
    """Call ``predicate`` until it returns something truthy and return that; at the deadline
    return its last (falsy) value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


async def poll_until_async(
    predicate: Callable[[], Awaitable[Any]], timeout: float, interval: float
) -> Any:
    """:func:`poll_until` for a coroutine ``predicate``, sleeping without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


def read_port_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The port a child (``--port 0 --port-file PATH``) wrote to ``path`` once listening;
    None if it exited first or did not write it within ``timeout`` seconds."""
    if not poll_until(lambda: path.exists() or proc.poll() is not None, timeout, 0.05):
        return None
    if not path.exists():
        return None
    return int(path.read_text().strip())


async def healthy(session: Any, url: str) -> bool:
    """Whether ``GET {url}/health`` answers 200 (``session``: an ``aiohttp.ClientSession``)."""
    import aiohttp

    try:
        async with session.get(f"{url}/health") as response:
            return bool(response.status == 200)
    except (aiohttp.ClientError, TimeoutError):
        return False
