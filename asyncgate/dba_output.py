"""How ``asyncgate jobs`` prints: aligned tables for people, one JSON document for scripts, and
the purge's progress line."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any

from asyncgate.models.inspect import WINDOWS, JobDetail, JobStats
from asyncgate.models.maintenance import Changes
from asyncgate.status import JobStatus
from asyncgate.text import table

Text = str | tuple[Sequence[str], Sequence[Sequence[str]]] | None
"""What a command prints for people: lines, a table (header and rows), or nothing."""


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"{type(value).__name__} is not JSON")


def as_json(document: Any, **options: Any) -> str:
    """JSON text of ``document``; times in ISO 8601, ids as strings, records as objects."""
    return json.dumps(document, default=_plain, **options)


def emit(json_wanted: bool, document: Any, text: Text) -> None:
    """Print ``document`` as JSON when asked to, ``text`` otherwise."""
    if json_wanted:
        print(as_json(document, indent=2))
    elif isinstance(text, tuple):
        print(table(*text))
    elif text is not None:
        print(text)


def when_text(value: datetime | None) -> str:
    """A time to the second in UTC (the sessions speak UTC), or ``-``."""
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def age_text(seconds: float) -> str:
    """``45s``, ``12m 5s``, ``3h 2m`` or ``2d 4h``."""
    s = int(seconds)
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            return f"{s // size}{unit} {s % size // small_size}{small}"
    return f"{s // 60}m {s % 60}s" if s >= 60 else f"{s}s"


def show_text(job: JobDetail) -> str:
    """A job's fields as a two-column table, then its request and outcome as indented JSON."""
    binary = job.result_bytes and f"{job.result_bytes} bytes ({job.result_content_type})"
    fields = [
        ("id", str(job.id)),
        ("kind", job.kind.value),
        ("status", job.status.value),
        ("key", job.key_name or "- (public)"),
        ("provider", job.provider),
        ("model", job.model),
        ("attempts", str(job.attempts)),
        ("status_code", "-" if job.status_code is None else str(job.status_code)),
        ("lease_owner", job.lease_owner or "-"),
        ("lease_expires_at", when_text(job.lease_expires_at)),
        ("created_at", when_text(job.created_at)),
        ("started_at", when_text(job.started_at)),
        ("completed_at", when_text(job.completed_at)),
        ("expires_at", when_text(job.expires_at)),
        ("deadline_at", when_text(job.deadline_at)),
        ("idempotency_key", job.idempotency_key or "-"),
        ("traceparent", job.traceparent or "-"),
        ("files", str(job.files)),
        ("result_bytes", binary or "-"),
    ]
    parts = [table(("FIELD", "VALUE"), fields)]
    for name, value in (("request", job.request), ("result", job.result), ("error", job.error)):
        if value is not None:
            parts.append(f"\n{name}:\n{as_json(value, indent=2, ensure_ascii=False)}")
    return "\n".join(parts)


def stats_document(stats: JobStats) -> dict[str, Any]:
    """``jobs stats --json``: every status counted (zeros too), and each (status, kind) seen."""
    by_status = {s.value: 0 for s in JobStatus}
    for (status, _), n in stats.counts.items():
        by_status[status.value] += n
    return {
        "total": sum(by_status.values()),
        "by_status": by_status,
        "counts": [
            {"status": s.value, "kind": k.value, "jobs": n}
            for (s, k), n in sorted(stats.counts.items())
        ],
        "oldest_pending_seconds": stats.oldest_pending_seconds,
        "finished": {f"{m}m": stats.finished[m] for m in WINDOWS},
    }


def stats_text(stats: JobStats) -> str:
    """The counts as a table, then the queue's age and the recent throughput in two lines."""
    rows = [(s.value, k.value, str(n)) for (s, k), n in sorted(stats.counts.items())]
    oldest = stats.oldest_pending_seconds
    finished = ", ".join(f"{stats.finished[m]} in {m} min" for m in WINDOWS)
    return "\n".join(
        [
            table(("STATUS", "KIND", "JOBS"), rows),
            "",
            f"oldest pending: {'none pending' if oldest is None else age_text(oldest)}",
            f"finished: {finished}",
        ]
    )


def outcome_rows(changes: Changes, done: str) -> list[tuple[str, str]]:
    """One (id, what happened) row per named job, changed ones first."""
    rows = [(str(i), done) for i in changes.changed]
    for i, status in changes.unchanged.items():
        already = done == status.value
        rows.append((str(i), f"already {done}" if already else f"refused: is {status.value}"))
    rows.extend((str(i), "not found") for i in changes.missing)
    return rows


class Meter:
    """The purge's progress, one line rewritten in place once a run lasts over a second."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.started = self.last = time.monotonic()
        self.shown = False

    def show(self, deleted: int) -> None:
        """Rewrite the line with the total so far, at most five times a second."""
        now = time.monotonic()
        if now - self.started < 1.0 or now - self.last < 0.2:
            return
        self.last = now
        rate = deleted / (now - self.started)
        self.stream.write(f"\rpurged {deleted} jobs ({rate:.0f}/s)")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        """End the progress line, if one was shown."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


@dataclasses.dataclass
class Purged:
    """What a purge has deleted so far: kept outside the event loop, so that an interrupted
    run can still say it."""

    deleted: int = 0
    batches: int = 0
    interrupted: bool = False
    meter: Meter | None = None

    def report(self, json_wanted: bool) -> None:
        """Print the total on stdout (ending any progress line first)."""
        if self.meter is not None:
            self.meter.done()
        document = {
            "deleted": self.deleted,
            "batches": self.batches,
            "interrupted": self.interrupted,
        }
        note = " before the interrupt" if self.interrupted else ""
        emit(json_wanted, document, f"purged {self.deleted} jobs in {self.batches} batches{note}")
        sys.stdout.flush()
