"""Logging set-up: one plain line per event, to stderr."""

from __future__ import annotations

import logging
import sys


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
