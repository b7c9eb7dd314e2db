"""The connection pool every store shares, the circuit breaker in front of it, and the
translation of driver failures.

Connections speak UTC and decode ``jsonb`` with orjson. Any failure to reach PostgreSQL surfaces
as :class:`DatabaseUnavailable`, so that callers above ``models`` never see a driver exception.

While PostgreSQL is unreachable the breaker is open: every request for a connection fails at
once, without waiting for the pool's timeout. It opens on a lost connection (a failed query, or
the watch connection the :class:`Database` keeps open) and closes when a probe connects again;
then a fresh pool replaces the one whose connections died with the server, so the first request
after the database returns does not pay for reconnect backoff or dead connections.

Behind a pooler in transaction mode (PgBouncer's ``pool_mode = transaction``), consecutive
transactions of one client connection may run on different server connections, so nothing here
keeps session state from one transaction to the next: a :class:`Database` given a separate
``listen_url`` (the sign that ``url`` goes through such a pooler) never prepares statements on
the server, and the time zone is set with ``SET TIME ZONE``, whose result the server reports
and PgBouncer re-applies to whichever server connection a client is given. What needs a session
(``LISTEN``, the migrations' advisory lock) connects to :attr:`Database.listen_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson
import psycopg
import psycopg_pool
from psycopg.types.json import set_json_dumps, set_json_loads

log = logging.getLogger("asyncgate.database")

UNAVAILABLE = "the job database is unavailable; retry shortly"


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or is not answering; the operation did not happen."""


PROBE_SECONDS = 0.2
"""While the breaker is open, how often a probe tries to connect."""
HEARTBEAT_SECONDS = 2.0
"""How often the watch connection runs a query, to notice a network that went silent."""
HEALTH_SECONDS = 1.0
"""Most time ``/health`` spends asking PostgreSQL before it answers 503."""
PREPARE_THRESHOLD = 5
"""Executions of a statement on one direct connection before it is prepared (psycopg's own
default): on PostgreSQL 15 a prepared claim runs in under half the time of an unprepared one."""

# Failures that mean "PostgreSQL is not reachable or not answering", as opposed to a bad query.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.AdminShutdown,
    psycopg.errors.CannotConnectNow,
    psycopg_pool.PoolTimeout,
    psycopg_pool.TooManyRequests,
    psycopg_pool.PoolClosed,
    psycopg.InterfaceError,
)


def dumps(value: object) -> str:
    """JSON text of ``value`` (orjson), as stored in jsonb columns."""
    return dumps_bytes(value).decode()


def dumps_bytes(value: object) -> bytes:
    """JSON text of ``value`` as UTF-8 bytes (orjson), as :func:`dumps` writes it."""
    try:
        return orjson.dumps(value)
    except TypeError:
        # orjson refuses integers wider than 64 bits, which JSON and jsonb allow.
        return json.dumps(value, ensure_ascii=False).encode()


async def _configure(conn: psycopg.AsyncConnection) -> None:
    set_json_loads(orjson.loads, conn)
    set_json_dumps(dumps, conn)
    # TimeZone is a reported parameter: PgBouncer remembers it per client and sets it on each
    # server connection it lends that client, in transaction mode too.
    await conn.execute("SET TIME ZONE 'UTC'")


async def _configure_generic(conn: psycopg.AsyncConnection) -> None:
    await _configure(conn)
    await conn.execute("SET plan_cache_mode = force_generic_plan")


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection or the server went away (not a failed statement).

    Errors raised by the client itself carry no SQLSTATE; class 08 is a connection exception,
    57P an administrator shutdown or a server that is starting or stopping. A pool timeout is
    not one: under load it only means every connection is busy.
    """
    if isinstance(exc, psycopg.InterfaceError | psycopg_pool.PoolClosed | OSError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith(("08", "57P"))
    return False


def first_line(exc: BaseException) -> str:
    """``Class: first line of the message``, for one-line logs."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


class CircuitBreaker:
    """Closed while PostgreSQL is believed reachable, open while it is not.

    Reading :attr:`is_open` is the only cost on the request path.
    """

    def __init__(self) -> None:
        self.is_open = False
        self.opened_at = 0.0
        self.recovered_at = time.monotonic()
        """When database access last became possible (start-up counts), monotonic seconds."""
        self.opened = asyncio.Event()
        self._on_close: list[Callable[[], None]] = []

    def trip(self, reason: BaseException) -> bool:
        """Open the breaker; True when it was closed until now."""
        if self.is_open:
            return False
        self.is_open = True
        self.opened_at = time.monotonic()
        self.opened.set()
        log.warning("database unreachable (%s); answering 503 until it is back", first_line(reason))
        return True

    def reset(self) -> None:
        """Close the breaker and tell the listeners registered with :meth:`on_close`."""
        if not self.is_open:
            return
        self.is_open = False
        self.opened.clear()
        self.recovered_at = time.monotonic()
        log.warning("database reachable again after %.1f s", self.recovered_at - self.opened_at)
        for callback in self._on_close:
            callback()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously) each time the breaker closes after an outage."""
        self._on_close.append(callback)


class Database:
    """A psycopg async pool behind a circuit breaker, mapping outages to DatabaseUnavailable.

    A connection that sat idle in the pool for more than ``check_idle_seconds`` is checked
    with a round trip before it is handed out; busy connections skip that round trip. A watch
    connection outside the pool notices at once when the server goes away and, while the
    breaker is open, probes every :data:`PROBE_SECONDS` until it can connect again.

    ``listen_url`` is a direct connection to PostgreSQL for session work, given when ``url``
    goes through a pooler; then statements are never prepared on the server (psycopg would
    prepare a statement after its fifth execution, and a transaction-mode pooler runs the next
    execution on a server connection that does not know it).

    With ``generic_plans``, each prepared statement is planned once per connection, for any
    parameters (``plan_cache_mode = force_generic_plan``). That suits a worker, whose
    statements find their rows by id, lease or the queue index whatever the parameters:
    planning the claim again on every execution took four times as long as running it on an
    empty queue. The API keeps PostgreSQL's choice (its listings' plans may depend on their
    filters).
    """

    def __init__(
        self,
        url: str,
        *,
        listen_url: str | None = None,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        check_idle_seconds: float = 1.0,
        generic_plans: bool = False,
    ) -> None:
        self.url = url
        self.listen_url = listen_url or url
        """Where connections that keep session state (LISTEN) connect: ``url`` unless given."""
        self.pooled = bool(listen_url)
        """Whether ``url`` is taken to lead through a transaction-mode pooler."""
        self.prepare_threshold: int | None = None if self.pooled else PREPARE_THRESHOLD
        """Executions after which psycopg prepares a statement on the server; None: never."""
        self.generic_plans = generic_plans and self.prepare_threshold is not None
        """Whether prepared statements use generic plans (never behind a pooler, which
        prepares nothing)."""
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.check_idle_seconds = check_idle_seconds
        self.breaker = CircuitBreaker()
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection, float] = (
            weakref.WeakKeyDictionary()
        )
        self.pool = self._new_pool()
        self._watch_task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()

    def _new_pool(self) -> psycopg_pool.AsyncConnectionPool:
        return psycopg_pool.AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            configure=_configure_generic if self.generic_plans else _configure,
            check=self._check_if_idle,
            reset=self._stamp,
            timeout=self.connect_timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(self.connect_timeout)),
                "prepare_threshold": self.prepare_threshold,
            },
            name="asyncgate",
        )

    async def _stamp(self, conn: psycopg.AsyncConnection) -> None:
        self._returned[conn] = time.monotonic()

    async def _check_if_idle(self, conn: psycopg.AsyncConnection) -> None:
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned > self.check_idle_seconds:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)

    @property
    def available(self) -> bool:
        """False while the breaker is open (PostgreSQL is known to be unreachable)."""
        return not self.breaker.is_open

    async def open(self) -> None:
        await self.pool.open(wait=False)
        self._watch_task = asyncio.create_task(self._watch_forever(), name="database-watch")

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await asyncio.gather(*self._retired, return_exceptions=True)
        await self.pool.close()

    def trip(self, reason: BaseException) -> None:
        """Open the breaker; the pool, whose connections are dead or dying, is closed so that
        whoever waits on it fails now instead of at its timeout."""
        if self.breaker.trip(reason):
            task = asyncio.create_task(self.pool.close(timeout=1.0), name="database-retire-pool")
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled autocommit connection; outages raise DatabaseUnavailable, at once while the
        breaker is open."""
        if self.breaker.is_open:
            raise DatabaseUnavailable(UNAVAILABLE)
        try:
            async with self.pool.connection() as conn:
                yield conn
        except _OUTAGE_ERRORS as exc:
            if connection_lost(exc):
                self.trip(exc)
            else:
                log.warning("database unavailable: %s", exc.__class__.__name__)
            raise DatabaseUnavailable(UNAVAILABLE) from exc

    async def read(
        self, query: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, tried once more on another connection when the one it got
        failed: after a database restart a pooled connection fails on first use, and a read is
        safe to repeat. (No second try when no connection could be had at all.)"""
        try:
            return await self._read(query, params)
        except DatabaseUnavailable as exc:
            if self.breaker.is_open or isinstance(
                exc.__cause__, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests
            ):
                raise
            return await self._read(query, params)

    async def _read(
        self, query: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        async with self.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def ping(self) -> bool:
        """True when PostgreSQL answers a trivial query within :data:`HEALTH_SECONDS`."""
        if self.breaker.is_open:
            return False
        try:
            async with asyncio.timeout(HEALTH_SECONDS), self.connection() as conn:
                await conn.execute("SELECT 1")
            return True
        except (DatabaseUnavailable, TimeoutError):
            return False

    # --- the watch connection -------------------------------------------------------------

    async def _watch_forever(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(1, int(self.connect_timeout)),
                    prepare_threshold=self.prepare_threshold,
                )
            except (psycopg.Error, OSError) as exc:
                self.trip(exc)
                await asyncio.sleep(PROBE_SECONDS)
                continue
            try:
                await self._watch(conn)
            except (psycopg.Error, OSError, TimeoutError, psycopg_pool.PoolTimeout) as exc:
                self.trip(exc)
            finally:
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()

    async def _watch(self, conn: psycopg.AsyncConnection) -> None:
        """Until ``conn`` fails: recover when the breaker is open, heartbeat otherwise."""
        last_heartbeat = time.monotonic()
        while True:
            if self.breaker.is_open:
                await self._recover()
            # Reading the socket is how a server that went away is noticed; notifications
            # themselves are not expected on this connection.
            async for _ in conn.notifies(timeout=PROBE_SECONDS):
                pass
            if self.breaker.is_open or time.monotonic() - last_heartbeat > HEARTBEAT_SECONDS:
                async with asyncio.timeout(max(1.0, self.connect_timeout)):
                    await conn.execute("SELECT 1")
                last_heartbeat = time.monotonic()

    async def _recover(self) -> None:
        """A fresh pool with one working connection, then the breaker closes.

        The pool's first connection runs a query before that: a pooler accepts connections
        while the server behind it is still down.
        """
        pool = self._new_pool()
        try:
            await pool.open(wait=True, timeout=max(1.0, self.connect_timeout))
            async with pool.connection(timeout=max(1.0, self.connect_timeout)) as conn:
                await conn.execute("SELECT 1")
        except BaseException:
            await pool.close(timeout=1.0)
            raise
        self.pool = pool
        self.breaker.reset()


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) means the database could not be reached."""
    return isinstance(exc, (DatabaseUnavailable, *_OUTAGE_ERRORS))


class DatabaseUnreachable(Exception):
    """PostgreSQL could not be reached within the start-up timeout."""


def wait_until_reachable(url: str, *, timeout: float, connect_timeout: float) -> None:
    """Return once PostgreSQL accepts a connection, retrying with backoff for ``timeout`` seconds.

    Each failed attempt is logged as one line. Raises :class:`DatabaseUnreachable` with a
    one-line reason when time runs out.
    """
    started = time.monotonic()
    deadline = started + timeout
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        try:
            with psycopg.connect(url, connect_timeout=max(1, int(connect_timeout))):
                pass
        except (psycopg.Error, OSError) as exc:
            reason = first_line(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnreachable(
                    f"the database is not reachable after {time.monotonic() - started:.0f} s "
                    f"({attempt} attempts; last: {reason})"
                ) from None
            pause = min(delay, left)
            log.warning(
                "database not reachable (attempt %d: %s); retrying in %.1f s",
                attempt,
                reason,
                pause,
            )
            time.sleep(pause)
            delay = min(delay * 2, 5.0)
            continue
        if attempt > 1:
            log.info("database reachable after %d attempts", attempt)
        return
