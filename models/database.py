"""The connection pool every store shares, and the translation of driver failures.

Connections speak UTC and decode ``jsonb`` with orjson. Any failure to reach PostgreSQL surfaces
as :class:`DatabaseUnavailable`, so that callers above ``models`` never see a driver exception.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import psycopg
import psycopg_pool
from psycopg.types.json import set_json_dumps, set_json_loads

log = logging.getLogger("asyncgate.database")

UNAVAILABLE = "the job database is unavailable; retry shortly"


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or is not answering; the operation did not happen."""


# Failures that mean "PostgreSQL is not reachable or not answering", as opposed to a bad query.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.AdminShutdown,
    psycopg.errors.CannotConnectNow,
    psycopg_pool.PoolTimeout,
    psycopg_pool.TooManyRequests,
    psycopg.InterfaceError,
)


def dumps(value: object) -> str:
    """JSON text of ``value`` (orjson), as stored in jsonb columns."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # orjson refuses integers wider than 64 bits, which JSON and jsonb allow.
        return json.dumps(value)


async def _configure(conn: psycopg.AsyncConnection) -> None:
    set_json_loads(orjson.loads, conn)
    set_json_dumps(dumps, conn)
    await conn.execute("SET TIME ZONE 'UTC'")


class Database:
    """A psycopg async pool plus a helper that maps outages to DatabaseUnavailable.

    A connection that sat idle in the pool for more than ``check_idle_seconds`` is checked
    with a round trip before it is handed out, so the first requests after a database restart
    do not fail on dead connections; busy connections skip that round trip.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        check_idle_seconds: float = 1.0,
    ) -> None:
        self.url = url
        self.check_idle_seconds = check_idle_seconds
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection, float] = (
            weakref.WeakKeyDictionary()
        )
        self.pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            configure=_configure,
            check=self._check_if_idle,
            reset=self._stamp,
            timeout=connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            name="asyncgate",
        )

    async def _stamp(self, conn: psycopg.AsyncConnection) -> None:
        self._returned[conn] = time.monotonic()

    async def _check_if_idle(self, conn: psycopg.AsyncConnection) -> None:
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned > self.check_idle_seconds:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled autocommit connection; outages raise DatabaseUnavailable."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except _OUTAGE_ERRORS as exc:
            log.warning("database unavailable: %s", exc.__class__.__name__)
            raise DatabaseUnavailable(UNAVAILABLE) from exc

    async def read(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, tried once more on another connection when the one it got
        failed: after a database restart a pooled connection fails on first use, and a read is
        safe to repeat. (No second try when no connection could be had at all.)"""
        try:
            return await self._read(query, params)
        except DatabaseUnavailable as exc:
            if isinstance(exc.__cause__, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
                raise
            return await self._read(query, params)

    async def _read(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def ping(self) -> bool:
        """True when PostgreSQL answers a trivial query."""
        try:
            async with self.connection() as conn:
                await conn.execute("SELECT 1")
            return True
        except DatabaseUnavailable:
            return False


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) means the database could not be reached."""
    return isinstance(exc, (DatabaseUnavailable, *_OUTAGE_ERRORS))
