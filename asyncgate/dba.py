"""``asyncgate jobs``: list, show, stats, requeue, cancel and purge, for operators.

Tables for people, ``--json`` (one document on stdout) for scripts. Exit status: 0 done; 1 some
named job (or key) was not found or was not in a state allowing the change, the others were
still done; 2 a usage or configuration error; 130 interrupted (a purge keeps the batches it had
deleted). The SQL is in :mod:`models.inspect` and :mod:`models.maintenance`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

from asyncgate.config import Settings
from asyncgate.dba_output import (
    Meter,
    Purged,
    emit,
    outcome_rows,
    show_text,
    stats_document,
    stats_text,
    when_text,
)
from asyncgate.errors import CANCELLED_STATUS_CODE, error_body
from asyncgate.kinds import Kind
from asyncgate.models.database import Database, DatabaseUnavailable
from asyncgate.models.inspect import JobInspector
from asyncgate.models.jobs import JobStore
from asyncgate.models.maintenance import JobMaintenance
from asyncgate.runtime import open_database
from asyncgate.status import JobStatus

OK, REFUSED, USAGE, INTERRUPTED = 0, 1, 2, 130
"""The exit statuses scripts may rely on."""


def run(settings: Settings, url: str, args: argparse.Namespace) -> int:
    """Run a ``jobs`` subcommand; returns its exit status."""
    purged = Purged()
    try:
        return asyncio.run(_run(settings, url, args, purged))
    except KeyboardInterrupt:
        if args.jobs_command == "purge":
            purged.interrupted = True
            purged.report(args.json)
        print("asyncgate: interrupted", file=sys.stderr)
        return INTERRUPTED
    except DatabaseUnavailable as exc:  # lost after start-up, like an unreachable database
        print(f"asyncgate: {exc}", file=sys.stderr)
        return REFUSED


async def _run(settings: Settings, url: str, args: argparse.Namespace, purged: Purged) -> int:
    async with open_database(settings, url) as db:
        command = args.jobs_command
        if command == "list":
            return await _list(JobInspector(db), args)
        if command == "show":
            return await _show(JobInspector(db), args)
        if command == "stats":
            stats = await JobInspector(db).stats()
            emit(args.json, stats_document(stats), stats_text(stats))
            return OK
        if command == "purge":
            return await _purge(db, args, purged)
        return await _change(JobMaintenance(db), args)


async def _list(inspector: JobInspector, args: argparse.Namespace) -> int:
    key_id = None
    if args.key is not None:
        key_id = await inspector.key_id(args.key)
        if key_id is None:
            print(f"asyncgate: no key named {args.key!r}", file=sys.stderr)
            emit(args.json, {"jobs": []}, None)
            return REFUSED
    rows = await inspector.list(
        status=args.status and JobStatus(args.status),
        kind=args.kind and Kind(args.kind),
        key_id=key_id,
        since=args.since,
        limit=args.limit,
    )
    header = ("ID", "KIND", "STATUS", "KEY", "MODEL", "ATTEMPTS", "CODE", "CREATED", "FINISHED")
    cells = [
        (
            str(r.id),
            r.kind.value,
            r.status.value,
            r.key_name or "-",
            r.model,
            str(r.attempts),
            "-" if r.status_code is None else str(r.status_code),
            when_text(r.created_at),
            when_text(r.completed_at),
        )
        for r in rows
    ]
    emit(args.json, {"jobs": rows}, (header, cells))
    return OK


async def _show(inspector: JobInspector, args: argparse.Namespace) -> int:
    detail = await inspector.show(args.id)
    if detail is None:
        print(f"asyncgate: no job {args.id}", file=sys.stderr)
        emit(args.json, {"job": None}, None)
        return REFUSED
    emit(args.json, {"job": detail}, show_text(detail))
    return OK


async def _change(maintenance: JobMaintenance, args: argparse.Namespace) -> int:
    ids: list[uuid.UUID] = list(args.ids)
    if args.jobs_command == "requeue":
        if args.failed_since is not None:
            ids = await maintenance.failed_since(args.failed_since)
        changes = await maintenance.requeue(ids)
        done, allowed = "requeued", set[JobStatus]()
    else:
        message = "the job was cancelled by an operator"
        error = error_body(CANCELLED_STATUS_CODE, message, error_type="job_cancelled")
        changes = await maintenance.cancel(ids, error)
        done, allowed = "cancelled", {JobStatus.CANCELLED}
    refused = {i: s for i, s in changes.unchanged.items() if s not in allowed}
    document: dict[str, Any] = {
        done: changes.changed,
        "unchanged": [{"id": i, "status": s} for i, s in changes.unchanged.items()],
        "not_found": changes.missing,
    }
    emit(args.json, document, (("ID", "OUTCOME"), outcome_rows(changes, done)))
    for i, status in refused.items():
        print(f"asyncgate: job {i} is {status.value}: not {done}", file=sys.stderr)
    for i in changes.missing:
        print(f"asyncgate: no job {i}", file=sys.stderr)
    return REFUSED if refused or changes.missing else OK


async def _purge(db: Database, args: argparse.Namespace, purged: Purged) -> int:
    store, maintenance = JobStore(db), JobMaintenance(db)
    meter = purged.meter = Meter(sys.stderr) if sys.stderr.isatty() else None
    while True:
        if args.expired:
            deleted = await store.sweep(args.batch_size)
        else:
            deleted = await maintenance.purge_before(args.before, args.batch_size)
        if deleted == 0:
            break
        purged.deleted += deleted
        purged.batches += 1
        if meter is not None:
            meter.show(purged.deleted)
        if args.pause > 0:
            await asyncio.sleep(args.pause)
    purged.report(args.json)
    return OK
