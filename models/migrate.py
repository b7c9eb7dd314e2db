"""Alembic migrations, serialised by an advisory lock so many processes may start at once."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from asyncgate.models.database import DatabaseUnreachable, first_line
from asyncgate.resources import migrations_dir

_LOCK_ID = 0x61737967  # "asyg": one lock for every asyncgate process on the database


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str) -> None:
    _run(url, lambda config: command.downgrade(config, revision))


def _run(url: str, action: Callable[[Config], None]) -> None:
    """Run ``action`` under the advisory lock; a lost database is :class:`DatabaseUnreachable`."""
    try:
        _run_locked(url, action)
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        reason = first_line(getattr(exc, "orig", None) or exc)
        raise DatabaseUnreachable(
            f"the database became unreachable during the migration: {reason}"
        ) from exc


def _run_locked(url: str, action: Callable[[Config], None]) -> None:
    # A creator accepts any libpq connection string, URL or key=value form alike.
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
            connection.commit()
            try:
                config = alembic_config()
                config.attributes["connection"] = connection
                action(config)
                connection.commit()
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                connection.commit()
    finally:
        engine.dispose()
