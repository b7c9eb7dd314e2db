"""Running a scenario on its own: a fresh database, a scratch directory, its processes stopped.

``python -m bench.NAME`` scenarios use :func:`run_alone`; ``bench.run`` uses :func:`database`
for its one database shared by every scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import uvloop

from bench.children import Processes, child_environment
from bench.report import say
from tests.launch import migrated_database

T = TypeVar("T")


@contextlib.contextmanager
def database(admin_url: str | None, work: Path) -> Iterator[str]:
    """A fresh, migrated database on ``admin_url`` (or an embedded server); dropped afterwards."""
    from asyncgate.embedded import EmbeddedPostgres

    embedded = None
    if admin_url is None:
        say("starting embedded PostgreSQL")
        embedded = EmbeddedPostgres(work / "pgdata")
        admin_url = embedded.start()
    try:
        with migrated_database(admin_url, f"asyncgate_bench_{uuid.uuid4().hex[:10]}") as url:
            yield url
    finally:
        if embedded is not None:
            embedded.stop()


def run_scenario(
    prefix: str,
    admin_url: str | None,
    out: Path,
    scenario: Callable[[str, Path, Processes], Awaitable[T]],
) -> T:
    """``scenario(url, work, procs)`` on uvloop with a fresh database and a scratch directory;
    the processes it starts log to ``out/logs`` and are all stopped afterwards."""
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        procs = Processes(log_dir, child_environment())
        try:
            with database(admin_url, work) as url:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    return runner.run(scenario(url, work, procs))
        finally:
            procs.close()


def run_alone(
    name: str,
    admin_url: str | None,
    out: Path,
    scenario: Callable[[str, Path, Processes], Awaitable[T]],
) -> T:
    """One scenario on its own (``python -m bench.NAME``): :func:`run_scenario`, then its
    figures in ``out/NAME.json``."""
    figures = run_scenario(f"asyncgate-{name}-", admin_url, out, scenario)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures
