"""Run every benchmark scenario in one go and report the figures against the goals.

    .venv/bin/python -m bench.run [--quick] [--at-scale] [--database-url URL] [--out bench/results]

Everything is started here and stopped on the way out, whatever happens: PostgreSQL (embedded
in a temporary directory unless ``--database-url`` names a server whose user may create
databases; a fresh database is created, migrated and dropped), the fake upstream, the gateway
processes (``asyncgate serve|api|worker``), the baseline app, and the load generator, which
runs in this process. All traffic stays on 127.0.0.1. See bench/README.md for the scenarios.
``--at-scale`` runs the at-scale scenario (bench/scale.py) instead of the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import bodies, chart, layouts
from bench.children import Processes, child_environment
from bench.drain import run_drain
from bench.harness import database
from bench.machine import machine_info
from bench.report import NOTES, goals, say, table
from bench.scale import AtScale
from bench.scenarios import Bench, Plan
from tests.launch import ROOT


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded server)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), type=Path)
    parser.add_argument(
        "--worker-concurrency", type=int, default=1000, help="worker concurrency in scenario 4"
    )
    parser.add_argument(
        "--drain-jobs",
        type=int,
        default=100_000,
        help="backlog of the drain scenario, run beside ten times as many completed jobs "
        "(quick: a fifth of it)",
    )
    parser.add_argument(
        "--at-scale",
        action="store_true",
        help="only the at-scale scenario: a million rows filled, then swept (several minutes)",
    )
    parser.add_argument(
        "--sweeper",
        default="{}",
        help="[sweeper] settings of the at-scale sweep, as JSON (default: the gateway's)",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the at-scale table")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    out: Path = args.out
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    plan = Plan.make(args.quick, args.worker_concurrency)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "plan": plan.__dict__,
        "notes": NOTES,
        "complete": False,
    }
    started = time.monotonic()
    say(
        f"asyncgate benchmark ({'quick' if plan.quick else 'full'}) on "
        f"{results['machine']['cores']} cores; logs in {log_dir}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="asyncgate-bench-") as tmp:
            work = Path(tmp)
            procs = Processes(log_dir, child_environment())
            try:
                with database(args.database_url, work) as url:
                    bench = Bench(plan, procs, work, url, results)
                    job = (
                        AtScale(bench, json.loads(args.sweeper), args.rows).run()
                        if args.at_scale
                        else None
                    )
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        if job is not None:
                            runner.run(job)
                        else:
                            runner.run(bench.run())
                            drain_jobs = args.drain_jobs // 5 if plan.quick else args.drain_jobs
                            runner.run(run_drain(bench, drain_jobs, 10 * drain_jobs))
                            results["scenarios"]["bodies"] = runner.run(bodies.measure(bench))
                            seconds = 5.0 if plan.quick else 10.0
                            if found := runner.run(layouts.measure(bench, seconds)):
                                results["scenarios"]["layouts"] = found
            finally:
                procs.close()
        results["complete"] = True
    finally:
        results["seconds"] = round(time.monotonic() - started, 1)
        results["goals"] = goals(results.get("scenarios", {}))
        # The at-scale run keeps files of its own beside the full run's.
        figures, summary = ("at_scale", "at_scale") if args.at_scale else ("results", "summary")
        (out / f"{figures}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        report = table(results)
        (out / f"{summary}.txt").write_text(report + "\n")
        if results.get("scenarios") and not args.at_scale:
            chart.draw(results, out / "chart.png")
        print()
        print(report, flush=True)
        state = "done" if results["complete"] else "stopped early (partial results)"
        say(f"{state} after {results['seconds']:.0f}s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
