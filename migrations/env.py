"""Alembic environment: the URL comes from ``asyncgate migrate`` or ASYNCGATE_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from asyncgate.models.tables import metadata


def _url() -> str:
    url = context.config.attributes.get("url") or os.environ.get("ASYNCGATE_DATABASE_URL")
    if not url:
        raise SystemExit("set ASYNCGATE_DATABASE_URL or run `asyncgate migrate`")
    return str(url)


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
