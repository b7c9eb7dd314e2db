"""The soak run: many jobs through real processes while workers crash and PostgreSQL restarts.

``python -m bench.soak [--jobs 10000] [--seed 1] [--out bench/results/soak.json]``

It starts its own embedded PostgreSQL, the loopback upstream (as a subprocess, with random 500s,
429s, timeouts longer than the provider timeout, and dropped connections), one ``asyncgate api``
and two ``asyncgate worker`` processes. It submits jobs at a steady rate, SIGKILLs a random
worker every 8-15 s (and starts a new one), stops PostgreSQL once for twice the lease, keeps
1,000 silent sockets and a slowloris client against the API, then waits until every accepted
job is terminal and checks that none was lost, stuck or ended twice.

A job counts as a double when it has more than one terminal line across all worker logs, when its
logged terminal state differs from the stored one, or when its stored row mixes the two states
(a result and an error). A job the upstream answered successfully twice is a double execution:
the price of a crash when one of its workers was killed, a defect otherwise. The exit status is
1 when any accepted job is lost, stuck, doubled or executed twice without a crash, 2 when the
setup fails, 130 when interrupted. Everything it starts is stopped on the way out, Ctrl-C and
SIGTERM included.
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
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

from bench import soak_webhooks
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
from bench.soak_sockets import HostileClients, raise_file_limit
from bench.soak_traffic import (
    PROBE_JOB,
    Chaos,
    Probe,
    Submissions,
    probe,
    run_chaos,
    submit_all,
    supervise,
)
from tests import launch
from tests.launch import ROOT
from tests.receiver import Receiver


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
    args: argparse.Namespace,
    fleet: Fleet,
    pg: Postgres,
    db_url: str,
    api: str,
    upstream: str,
    receiver: Receiver,
) -> dict[str, Any]:
    await wait_ready(api, fleet)
    subs = Submissions()
    chaos = Chaos()
    probes = Probe()
    stop = asyncio.Event()
    stop_probing = asyncio.Event()
    hostile = HostileClients("127.0.0.1", int(api.rsplit(":", 1)[1]))
    hostile.start(args.silent_sockets, args.slowloris)
    started = time.monotonic()
    window = max(args.jobs / args.rate, 25.0)
    helpers = [
        asyncio.create_task(supervise(fleet, stop)),
        asyncio.create_task(progress(db_url, subs, chaos, started, stop)),
    ]
    probing = asyncio.create_task(probe(api, probes, subs, stop_probing, 0.1))
    chaos_task = asyncio.create_task(
        run_chaos(
            random.Random(f"{args.seed}-chaos"), fleet, pg, window, args.db_down, chaos, started
        )
    )
    try:
        await submit_all(api, args.jobs, args.rate, args.seed, subs)
        submitted = time.monotonic()
        await chaos_task
        stop_probing.set()  # every job the drain waits for, probes' included, is accepted now
        await probing
        ids = [uuid.UUID(i) for i in subs.accepted]
        drained = await wait_terminal(db_url, ids, args.max_wait)
        finished = time.monotonic()
        hooked = {job for job, spec in subs.accepted.items() if spec is not PROBE_JOB}
        await soak_webhooks.wait_delivered(receiver, hooked, args.max_wait)
        delivered = time.monotonic()
    finally:
        stop.set()
        stop_probing.set()
        chaos_task.cancel()
        await asyncio.gather(chaos_task, probing, *helpers, return_exceptions=True)
        await hostile.stop()
    executions, successes, outcomes = await upstream_executions(upstream)
    polled = await poll_sample(api, db_url, subs, args.seed)
    killed = {k["worker"] for k in chaos.kills}
    figures = check(
        db_url, subs, read_worker_logs(fleet.worker_logs()), executions, successes, killed
    )
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
            "outage": outage_figures(subs, probes, chaos),
            "webhooks": soak_webhooks.figures(receiver, hooked),
            "hostile_connections": hostile.figures(),
            "file_limit": args.file_limit,
            "unplanned_exits": [vars(u) for u in fleet.unplanned],
            "duration_seconds": {
                "submit": round(submitted - started, 1),
                "drain": round(finished - submitted, 1),
                "webhooks_after_drain": round(delivered - finished, 1),
                "total": round(delivered - started, 1),
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


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def _probed(
    samples: list[tuple[float, int, float]], down: float, back: float, ok: int
) -> dict[str, Any]:
    during = [(status, took) for t, status, took in samples if down <= t <= back]
    after = [t - took for t, status, took in samples if t - took > back and status == ok]
    return {
        "n_while_down": len(during),
        "statuses_while_down": dict(Counter(str(status) for status, _ in during)),
        "max_ms_while_down": _ms([took for _, took in during], 1.0),
        f"first_{ok}_sent_after_back_seconds": round(after[0] - back, 2) if after else None,
    }


def outage_figures(subs: Submissions, probes: Probe, chaos: Chaos) -> dict[str, Any]:
    """How fast the gateway said 503 while PostgreSQL was down, and how fast it recovered."""
    down, back = chaos.db_down_at, chaos.db_back_at
    if down is None or back is None:
        return {}
    before = [took for t, took in subs.accepted_latency if t < down - 1]

    def window(start: float, end: float) -> dict[str, Any]:
        took = [x for t, x in subs.accepted_latency if back + start <= t < back + end]
        return {"n": len(took), "p50_ms": _ms(took, 0.5), "p99_ms": _ms(took, 0.99)}

    return {
        "submit_503": {
            "n": len(subs.unavailable_latency),
            "p50_ms": _ms(subs.unavailable_latency, 0.5),
            "p99_ms": _ms(subs.unavailable_latency, 0.99),
            "max_ms": _ms(subs.unavailable_latency, 1.0),
        },
        "health_probe": _probed(probes.health, down, back, 200),
        "submit_probe": _probed(probes.submit, down, back, 202),
        "submit_before": {
            "n": len(before),
            "p50_ms": _ms(before, 0.5),
            "p99_ms": _ms(before, 0.99),
        },
        "submit_after_back": {
            "0-1s": window(0, 1),
            "1-2s": window(1, 2),
            "2-5s": window(2, 5),
            "5-10s": window(5, 10),
        },
    }


def _sockets(c: dict[str, Any]) -> str:
    return (
        f"opened {c['opened']} (at most {c['peak_open']} at once), closed by the server "
        f"{c['closed_by_server']}, failed to open {c['open_failures']} {c['errors'] or ''}"
    )


def summary(f: dict[str, Any]) -> str:
    s, e, d = f["submit"], f["executions"], f["duration_seconds"]
    x, o, h = f["double_successes"], f["outage"], f["hostile_connections"]
    w = f["webhooks"]
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
        f"  lost                    {f['lost']:>7}   stuck (not terminal) {f['stuck']}",
        f"  doubles                 {f['doubles']:>7}   (several terminal log lines "
        f"{f['doubles_in_logs']}, log/DB disagreements {f['log_db_disagreements']}, "
        f"inconsistent rows {f['inconsistent_rows']})",
        f"  upstream executions/job  max {e['max']}, mean {e['mean']:.2f}, histogram "
        + " ".join(f"{k}:{v}" for k, v in e["histogram"].items()),
        f"  over the bound          {e['violations']:>7}   ({e['bound']})",
        f"  double executions       {x['jobs']:>7}   (two successful upstream calls: "
        f"{x['after_crash']} after a worker was killed, {x['defects']} without a crash)",
    ]
    lines += [f"      {n:>5}  {why}" for why, n in x["reasons"].items()]
    lines += [
        "  attempts/job            "
        + " ".join(f"{k}:{v}" for k, v in f["attempts_histogram"].items()),
        f"  worker kills {f['worker_kills']}, DB restarts {f['db_restarts']} "
        f"(down {f['db_down_seconds']:.1f}s, first 202 "
        f"{f['first_202_after_db_back_seconds']}s after it was back), "
        f"unplanned exits {len(f['unplanned_exits'])}",
        "  worker log events       "
        + ", ".join(f"{k} {v}" for k, v in sorted(f["worker_log_events"].items())),
        f"  outage                  503s {o.get('submit_503')}",
        f"                          probe /health {o.get('health_probe')}",
        f"                          probe submit {o.get('submit_probe')}",
        f"                          submits before {o.get('submit_before')}",
        f"                          after {o.get('submit_after_back')}",
        f"  hostile connections     silent {_sockets(h['silent'])}",
        f"                          slowloris {_sockets(h['slowloris'])} "
        f"(open-file limit {f['file_limit']})",
        f"  errors in gateway logs  {sum(f['errors_in_logs'].values()):>7}",
        f"  webhooks                {w['delivered']:>7} of {w['jobs_expecting_an_event']} "
        f"events delivered, missing {w['missing']}; {w['attempts_received']} attempts "
        f"received, {w['refused_by_receiver']} refused by the receiver "
        f"({w['fail_ratio']:.0%} fail), {w['delivered_more_than_once']} delivered twice or "
        f"more, {w['events_with_several_ids']} under several webhook-ids",
    ]
    lines += [f"      {n:>5}  {text}" for text, n in list(f["errors_in_logs"].items())[:10]]
    lines += [
        f"  rows never acknowledged {f['rows_never_acknowledged']:>7}   "
        f"terminal without a log line {f['terminal_without_log_line']}",
        f"  poll sample             {f['poll_sample']['polled']:>7}   "
        f"mismatches {f['poll_sample']['mismatches']}",
        f"  duration                submit {d['submit']}s, drain {d['drain']}s, "
        f"total {d['total']}s{'' if f['drained'] else ' (gave up waiting)'}",
        f"  result: {'PASS' if passed(f) else 'FAIL'}",
    ]
    return "\n".join(lines)


def passed(f: dict[str, Any]) -> bool:
    """Nothing lost, stuck, doubled, nor paid for twice without a crash."""
    return (
        f["lost"] == 0
        and f["stuck"] == 0
        and f["doubles"] == 0
        and f["double_successes"]["defects"] == 0
        and f["drained"]
        and f["webhooks"]["missing"] == 0
        and f["webhooks"]["events_with_several_ids"] == 0
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--rate", type=float, default=150.0, help="submissions per second")
    parser.add_argument(
        "--db-down",
        type=float,
        default=2 * LEASE_SECONDS,
        help="seconds PostgreSQL is down (default: twice the lease)",
    )
    parser.add_argument("--silent-sockets", type=int, default=1000)
    parser.add_argument("--slowloris", type=int, default=50, help="slowloris connections")
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
    # The hostile sockets, the clients and the API's own connections need more than 1,024
    # descriptors; the children started below inherit the raised limit.
    before, args.file_limit = raise_file_limit(16384)
    if args.file_limit < args.silent_sockets + args.slowloris + 1024:
        print(f"soak: open-file limit {args.file_limit} (was {before}) is low", file=sys.stderr)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="asyncgate-soak-"))
    pg = Postgres(workdir / "pgdata")
    upstream = UpstreamProcess(workdir, args.seed)
    fleet: Fleet | None = None
    receiver = soak_webhooks.start_receiver(args.seed)
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
        soak_webhooks.create_endpoint(config, receiver, launch.child_environment())
        fleet = Fleet(workdir, config)
        fleet.start()
        figures = asyncio.run(
            drive(args, fleet, pg, db_url, f"http://127.0.0.1:{api_port}", upstream.url, receiver)
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
            receiver.stop()
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
    return 0 if passed(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
