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
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

from bench.soak_checks import (
    check,
    poll_sample,
    read_errors,
    read_worker_logs,
    unfinished,
    upstream_executions,
    wait_terminal,
)
from bench.soak_setup import (
    FAULTS,
    LEASE_SECONDS,
    MAX_ATTEMPTS,
    PROVIDER_TIMEOUT,
    RENEW_SECONDS,
    RETRY_TRIES,
    STARTUP_SECONDS,
    UPSTREAM_TIMEOUT_SLEEP,
    WORKERS,
    Fleet,
    Postgres,
    SoakAbort,
    UpstreamProcess,
    write_config,
)
from bench.soak_traffic import Chaos, Submissions, run_chaos, submit_all, supervise
from tests import launch
from tests.launch import ROOT


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


# --- the run ---------------------------------------------------------------------------------


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


async def wait_ready(api: str, fleet: Fleet) -> None:
    """Until the API answers ``/health`` and every worker has logged its start."""
    deadline = time.monotonic() + STARTUP_SECONDS
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        if not await launch.poll_until_async(
            lambda: launch.healthy(session, api), STARTUP_SECONDS, 0.2
        ):
            raise SoakAbort("the API did not become healthy")

    async def workers_started() -> bool:
        logs = [launch.read_log(w.log_path) for w in fleet.workers]
        return all(" started (concurrency" in text for text in logs)

    if not await launch.poll_until_async(workers_started, deadline - time.monotonic(), 0.2):
        raise SoakAbort("the workers did not start")


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
        launch.create_database(admin_url, "soak")
        db_url = pg.url("soak")
        from asyncgate.models import migrate

        migrate.upgrade(db_url)
        upstream.start()
        api_port = launch.free_port()
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
