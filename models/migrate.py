"""Alembic migrations, serialised by an advisory lock so many processes may start at once."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

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
