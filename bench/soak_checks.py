"""The soak run's checks: what the database, the worker logs, the API and the upstream say
about every accepted job, and whether any was lost or ended twice.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg

from bench.soak_setup import MAX_ATTEMPTS, RETRY_TRIES
from bench.soak_traffic import Submissions
from tests import launch

TERMINAL = ("completed", "failed")

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
LOG_CLAIMED = re.compile(rf"job ({_UUID}) kind=\S+ provider=\S+ processing attempt=\d+")
LOG_LEASE_TROUBLE = re.compile(
    rf"job ({_UUID}) .*(lease expired|lease lost|result dropped|claimed again while still running)"
)
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


async def wait_terminal(url: str, ids: list[uuid.UUID], max_wait: float) -> bool:
    """Whether every accepted job is terminal within ``max_wait`` seconds."""

    async def done() -> bool:
        return await asyncio.to_thread(unfinished, url, ids) == 0

    return bool(await launch.poll_until_async(done, max_wait, 1.0))


# --- checks ----------------------------------------------------------------------------------


@dataclass
class LogFacts:
    terminal: dict[str, list[str]]
    events: Counter[str]
    claims: dict[str, list[str]]
    """Job id -> the workers (log names) that claimed it, one entry per claim."""
    lease_trouble: dict[str, list[str]]
    """Job id -> lease events logged for it (expired, lost, result dropped...)."""


def read_worker_logs(paths: Iterable[Path]) -> LogFacts:
    """Terminal lines per job id across every worker log, plus counts of lease events."""
    terminal: dict[str, list[str]] = defaultdict(list)
    claims: dict[str, list[str]] = defaultdict(list)
    trouble: dict[str, list[str]] = defaultdict(list)
    events: Counter[str] = Counter()
    for path in paths:
        with open(path, errors="replace") as handle:
            for line in handle:
                if match := LOG_CLAIMED.search(line):
                    claims[match.group(1)].append(path.stem)
                elif match := LOG_LEASE_TROUBLE.search(line):
                    trouble[match.group(1)].append(f"{path.stem}: {match.group(2)}")
                if match := LOG_FINISHED.search(line):
                    terminal[match.group(1)].append(match.group(2))
                elif match := LOG_REAPED.search(line):
                    terminal[match.group(1)].append("failed")
                for name, pattern in LOG_EVENTS.items():
                    if pattern.search(line):
                        events[name] += 1
    return LogFacts(dict(terminal), events, dict(claims), dict(trouble))


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


def double_successes(
    accepted: Iterable[str], successes: dict[str, int], logs: LogFacts, killed: set[str]
) -> dict[str, Any]:
    """Jobs the upstream answered successfully more than once, and why.

    When one of the job's workers was SIGKILLed, the second call is the price of that crash
    (the worker died after the upstream answered and before the result was stored). Otherwise
    it is a defect, explained by the job's lease events, or, with a single claim, by a retry
    within one execution after an answer that arrived too late.
    """
    after_crash: dict[str, list[str]] = {}
    defects: dict[str, dict[str, Any]] = {}
    reasons: Counter[str] = Counter()
    for job_id in accepted:
        if successes.get(job_id, 0) < 2:
            continue
        claimants = logs.claims.get(job_id, [])
        dead = [w for w in claimants if w in killed]
        if dead:
            after_crash[job_id] = claimants
            reasons[f"worker killed (SIGKILL) holding it: {len(claimants)} claims"] += 1
            continue
        trouble = logs.lease_trouble.get(job_id, [])
        if trouble:
            why = "lease events: " + ", ".join(sorted({t.split(": ", 1)[1] for t in trouble}))
        elif len(claimants) <= 1:
            why = "one execution retried after an answer that came too late"
        else:
            why = f"claimed {len(claimants)} times with no lease event logged"
        reasons[why] += 1
        defects[job_id] = {
            "successes": successes[job_id],
            "claims": claimants,
            "lease_events": trouble,
            "why": why,
        }
    return {
        "jobs": len(after_crash) + len(defects),
        "after_crash": len(after_crash),
        "defects": len(defects),
        "reasons": dict(reasons.most_common()),
        "defect_examples": dict(list(defects.items())[:20]),
        "after_crash_examples": dict(list(after_crash.items())[:5]),
    }


def check(
    url: str,
    subs: Submissions,
    logs: LogFacts,
    executions: dict[str, int],
    successes: dict[str, int],
    killed: set[str],
) -> dict[str, Any]:
    rows = query(
        url,
        "SELECT id::text, status, status_code, attempts, error, "
        "result IS NOT NULL OR result_bytes IS NOT NULL, completed_at IS NOT NULL, "
        "lease_owner IS NOT NULL FROM async_jobs",
    )
    by_id = {row[0]: row for row in rows}
    accepted = subs.accepted
    lost = [i for i in accepted if i not in by_id]
    stuck = [i for i in accepted if i in by_id and by_id[i][1] not in TERMINAL]
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
        "stuck": len(stuck),
        "stuck_ids": stuck[:50],
        "double_successes": double_successes(accepted, successes, logs, killed),
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


async def upstream_executions(
    upstream_url: str,
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Requests per job, successful answers per job, and outcome counts, from the upstream."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.get(f"{upstream_url}/_upstream/stats") as response,
    ):
        stats = orjson.loads(await response.read())
    return stats["executions"], stats["successes"], stats["outcomes"]
