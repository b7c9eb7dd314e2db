"""Alembic migrations, serialised by an advisory lock so many processes may start at once.

Every command brings the schema up to date before it runs. A database already at the newest
revision is recognised with one query, without alembic: importing alembic and SQLAlchemy and
reading the scripts costs about a second of CPU, which every process start and every DBA
command would otherwise pay.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from asyncgate.models.database import DatabaseUnreachable, first_line
from asyncgate.resources import migrations_dir

if TYPE_CHECKING:
    from alembic.config import Config

_LOCK_ID = 0x61737967  # "asyg": one lock for every asyncgate process on the database


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision among the scripts, read from their ``revision`` and
    ``down_revision`` assignments (the one no other script revises)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in (migrations_dir() / "versions").glob("*.py"):
        values: dict[str, object] = {}
        for node in ast.parse(script.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    values[target.id] = ast.literal_eval(node.value)
        revision, down = values.get("revision"), values.get("down_revision")
        if isinstance(revision, str):
            revisions.add(revision)
            if isinstance(down, str):
                revised.add(down)
            elif isinstance(down, tuple | list):  # a merge revises several
                revised.update(down)
    heads = revisions - revised
    if len(heads) != 1:
        raise RuntimeError(f"the migration scripts must have one head, not {sorted(heads)}")
    return heads.pop()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; None before the first migration."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(f"the database is unreachable: {first_line(exc)}") from exc
    return None if row is None else str(row[0])


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    if revision == "head" and current_revision(url) == head_revision():
        return
    from alembic import command

    _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    _run(url, lambda config: command.downgrade(config, revision))


def _run(url: str, action: Callable[[Config], None]) -> None:
    """Run ``action`` under the advisory lock; a lost database is :class:`DatabaseUnreachable`."""
    import sqlalchemy.exc

    try:
        _run_locked(url, action)
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        reason = first_line(getattr(exc, "orig", None) or exc)
        raise DatabaseUnreachable(
            f"the database became unreachable during the migration: {reason}"
        ) from exc


def _run_locked(url: str, action: Callable[[Config], None]) -> None:
    from sqlalchemy import create_engine, text

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
