"""A/B of two versions of the code under wrk, in one run: which one costs less per request.

    .venv/bin/python -m bench.ab A [B] [--app baseline|api] [--request submit|poll|...]
                                 [--rounds 6] [--seconds 4] [--database-url URL] [--schema REV]

A and B are git revisions (B defaults to the working tree). Each is laid out as the installed
package would be (``asyncgate`` with ``handlers``, ``models``, ... inside it, in a temporary
directory), and started side by side: the baseline app (``python -m bench.baseline``) or a
gateway ``api`` process on a database of this run's own (``--database-url``, a server whose user
may create databases; default: the embedded server; ``--schema`` stops its migrations at a
revision that both know). wrk then sends the ~1 KB chat submit, or
the same with a new ``Idempotency-Key`` on each (``idempotent-submit``), or the poll of one
completed job, to A and B in turns (A, B, B, A, A, B, ...), so that whatever the
machine does meanwhile falls on both alike. Reported per version: the median over the rounds of
requests/s and of the server process's CPU microseconds per request, read from the process.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import orjson
import psycopg

from asyncgate.models import migrate
from bench.children import Processes, child_environment, gateway_config
from bench.drain import COMPLETED, ORDERED_ID
from bench.layouts import CHAT_PATH, post_script, run_wrk, wrk_available
from bench.loadgen import chat_request, chat_result
from bench.machine import CpuMeter
from bench.report import say
from tests import launch
from tests.launch import ROOT

LAYERS = ("handlers", "models", "worker", "spec", "migrations")
"""Top-level folders of the repository, each a subpackage of ``asyncgate`` once installed."""

_IDEMPOTENT = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("prefix", string.format("%d-%d-", os.time(), threads))
end
local sent = 0
function request()
  sent = sent + 1
  wrk.headers["Idempotency-Key"] = prefix .. sent
  return wrk.format()
end
"""
"""Each request with a new Idempotency-Key (every one a first use), unique across wrk's threads
and runs."""


def checkout(revision: str | None, into: Path) -> Path:
    """The source of ``revision`` (None: the working tree) under ``into/src``, and the
    installed layout of its package under ``into/pkg``; returns ``into``."""
    src = into / "src"
    into.mkdir(parents=True)
    if revision is None:
        src.symlink_to(ROOT)
    else:
        src.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(src, filter="data")
    package = into / "pkg" / "asyncgate"
    package.mkdir(parents=True)
    for entry in (src / "asyncgate").iterdir():
        (package / entry.name).symlink_to(entry)
    for folder in LAYERS:
        (package / folder).symlink_to(src / folder)
    return into


def _environment(tree: Path) -> dict[str, str]:
    """The children run in ``tree/pkg`` (so ``asyncgate`` is that version's, ahead of the
    installed one) with ``bench`` and ``tests`` from ``tree/src``."""
    env = child_environment()
    env["PYTHONPATH"] = str(tree / "src")
    return env


class Side:
    """One version's process and its figures per round."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], url: str) -> None:
        self.name = name
        self.proc = proc
        self.url = url
        self.rates: list[float] = []
        self.cpu_us: list[float] = []

    async def round(self, target: str, lua: Path | None, seconds: float) -> None:
        with CpuMeter(self.proc) as cpu:
            done = (await run_wrk(self.url + target, lua, seconds))["ok"]
        self.rates.append(done / cpu.seconds)
        self.cpu_us.append(cpu.per_job_us(max(done, 1))["server"])

    def summary(self) -> dict[str, float]:
        return {
            "per_second": round(statistics.median(self.rates), 1),
            "cpu_us": round(statistics.median(self.cpu_us), 1),
        }


async def _start(
    procs: Processes, name: str, tree: Path, app: str, database_url: str | None, work: Path
) -> Side:
    port = launch.free_port()
    if app == "baseline":
        argv = [sys.executable, "-m", "bench.baseline", "--port", str(port)]
    else:
        assert database_url is not None
        config = gateway_config(
            work / f"ab-{name}.toml",
            port=port,
            database_url=database_url,
            upstream_url="http://127.0.0.1:9/v1",
        )
        argv = launch.gateway_argv(config, "api")
    log = work / f"ab-{name}.log"
    proc = launch.start_process(argv, log, _environment(tree), cwd=tree / "pkg")
    procs.children.append((f"ab-{name}", proc))
    url = f"http://127.0.0.1:{port}"
    await procs.wait_http(url, proc)
    return Side(name, proc, url)


async def _completed_job(database_url: str) -> str:
    """A completed chat job, written by the drain scenario's own statement for one."""
    request = chat_request()
    params = {
        "provider": request["model"].split("/", 1)[0],
        "model": request["model"],
        "request": orjson.dumps(request).decode(),
        "result": orjson.dumps(chat_result()).decode(),
        "jobs": 1,
    }
    statement = COMPLETED.format(id=ORDERED_ID.format(at="at")) + " RETURNING id"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute(statement, params)).fetchone()
    assert row is not None
    return str(row[0])


async def run(args: argparse.Namespace, work: Path, database_url: str | None) -> dict[str, Any]:
    trees = {
        "A": checkout(args.a, work / "a"),
        "B": checkout(args.b, work / "b"),
    }
    body = work / "body.json"
    body.write_bytes(orjson.dumps(chat_request()))
    lua: Path | None = None
    target = CHAT_PATH
    if args.request in ("submit", "idempotent-submit"):
        lua = work / "post.lua"
        idempotent = _IDEMPOTENT if args.request == "idempotent-submit" else ""
        lua.write_text(post_script(body) + idempotent)
    elif args.app == "api":
        assert database_url is not None
        target = f"{CHAT_PATH}/{await _completed_job(database_url)}"
    else:
        target = f"{CHAT_PATH}/{'0' * 8}-0000-7000-8000-{'0' * 12}"
    procs = Processes(work, child_environment())
    try:
        sides = [
            await _start(procs, name, tree, args.app, database_url, work)
            for name, tree in trees.items()
        ]
        for side in sides:
            await run_wrk(side.url + target, lua, 1.0)  # warm-up
        for number in range(args.rounds):
            order = sides if number % 2 == 0 else sides[::-1]
            for side in order:
                await side.round(target, lua, args.seconds)
            say(
                f"round {number + 1}: "
                + ", ".join(f"{s.name} {s.rates[-1]:.0f}/s {s.cpu_us[-1]:.0f} us" for s in sides)
            )
    finally:
        procs.close()
    out = {side.name: side.summary() for side in sides}
    a, b = out["A"], out["B"]
    say(
        f"{args.app} {args.request}: A ({args.a}) {a['per_second']:.0f}/s, {a['cpu_us']:.0f} us;"
        f" B ({args.b or 'working tree'}) {b['per_second']:.0f}/s, {b['cpu_us']:.0f} us;"
        f" B/A CPU per request {b['cpu_us'] / a['cpu_us']:.3f}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("a", help="revision A (e.g. HEAD~1)")
    parser.add_argument("b", nargs="?", help="revision B (default: the working tree)")
    parser.add_argument("--app", choices=["baseline", "api"], default="baseline")
    parser.add_argument(
        "--request", choices=["submit", "idempotent-submit", "poll"], default="submit"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument(
        "--schema", help="api: migrate the database only this far (a revision A or B predates)"
    )
    args = parser.parse_args(argv)
    if not wrk_available():
        say("wrk is not installed: apt-get install wrk")
        return 2
    with tempfile.TemporaryDirectory(prefix="asyncgate-ab-") as tmp:
        work = Path(tmp)
        if args.app == "baseline":
            asyncio.run(run(args, work, None))
            return 0
        from bench.harness import run_alone

        async def scenario(url: str, _work: Path, _procs: Processes) -> dict[str, Any]:
            if args.schema:
                migrate.downgrade(url, args.schema)
            return await run(args, work, url)

        run_alone("ab", args.database_url, work, scenario)
    return 0


if __name__ == "__main__":
    sys.exit(main())
