"""The ``asyncgate jobs`` command line: its arguments, parsed without loading the stores (every
command builds the whole parser, so this module stays light).

:mod:`asyncgate.dba` runs the commands.
"""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from asyncgate.kinds import Kind
from asyncgate.status import JobStatus

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def when(text: str) -> datetime:
    """A point in time given as ISO 8601 (UTC unless it says otherwise) or as a duration back
    from now (``90s``, ``15m``, ``2h``, ``7d``, ``1w``)."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        seconds = float(match[1]) * _UNITS[match[2]]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time nor a duration such as 15m, 2h or 7d"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def job_id(text: str) -> uuid.UUID:
    """A job id as the API returns it."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id") from None


def positive(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def add_jobs_command(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """The ``jobs`` command and its subcommands, made by ``add_command`` (a subparsers'
    ``add_parser``)."""
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="one JSON document on stdout")
    jobs = add_command("jobs", help="inspect, requeue, cancel and purge jobs")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = sub.add_parser("list", parents=[out], help="jobs newest first, expired ones too")
    listing.add_argument("--status", choices=[s.value for s in JobStatus], help="in this state")
    listing.add_argument("--kind", choices=[k.value for k in Kind], help="of this kind")
    listing.add_argument("--key", metavar="KEYNAME", help="submitted with the key of this name")
    listing.add_argument(
        "--since", type=when, metavar="WHEN", help="submitted since WHEN (ISO 8601, or 15m, 2h, 7d)"
    )
    listing.add_argument("--limit", type=positive, default=50, help="at most N jobs (50)")
    show = sub.add_parser("show", parents=[out], help="one job: request, outcome, lease, times")
    show.add_argument("id", type=job_id, help="the job id")
    sub.add_parser("stats", parents=[out], help="counts by status and kind, queue age, throughput")
    requeue = sub.add_parser("requeue", parents=[out], help="failed or cancelled jobs to pending")
    requeue.add_argument("ids", nargs="*", type=job_id, metavar="ID", help="the job ids")
    requeue.add_argument(
        "--failed-since", type=when, metavar="WHEN", help="every job that failed since WHEN"
    )
    requeue.set_defaults(jobs_parser=requeue)
    cancel = sub.add_parser("cancel", parents=[out], help="cancel pending or processing jobs")
    cancel.add_argument("ids", nargs="+", type=job_id, metavar="ID", help="the job ids")
    purge = sub.add_parser("purge", parents=[out], help="delete finished jobs in batches")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--expired", action="store_true", help="jobs whose results have expired")
    which.add_argument(
        "--before", type=when, metavar="WHEN", help="finished jobs submitted before WHEN"
    )
    purge.add_argument(
        "--batch-size", type=positive, default=1000, help="rows deleted per transaction (1000)"
    )
    purge.add_argument(
        "--pause", type=float, default=0.0, help="seconds to wait between batches (0)"
    )


def check(args: argparse.Namespace) -> None:
    """Refuse argument combinations argparse cannot express (exits 2 with the usage)."""
    if args.jobs_command == "requeue" and bool(args.ids) == (args.failed_since is not None):
        args.jobs_parser.error("give job ids or --failed-since, one of the two")
