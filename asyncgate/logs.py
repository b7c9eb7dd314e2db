"""Logging set-up: one plain line per event, to stderr."""

from __future__ import annotations

import logging
import sys
import warnings


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("connexion", "uvicorn.access", "psycopg.pool", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Malformed multipart bodies are the client's problem and are answered 400.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    # Connexion imports Starlette's test client, which warns about its HTTP library at import.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
