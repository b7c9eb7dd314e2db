"""Completion events: one LISTEN connection per process, fanned out to any number of waiters.

Every statement that makes a job terminal sends its id on :data:`models.jobs.DONE_CHANNEL`. A
process keeps a single connection listening there (reconnecting by itself, like
:mod:`models.notifications`) and wakes the in-memory waiters of that id; a waiting client costs
an entry in a dict, never a database connection. Notifications sent while the connection was
down are lost, so after every (re)connect the jobs still waited on are read again in one query
and the waiters of those that finished meanwhile are woken.

The same connection hears :data:`models.jobs.REQUEUED_CHANNEL`: a job an operator sent back to
``pending`` is no longer terminal, so the store's cached answer for it is dropped (all of them
after a reconnect, since such a notification may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator

import psycopg

from asyncgate.models.database import is_outage
from asyncgate.models.jobs import DONE_CHANNEL, REQUEUED_CHANNEL, JobStore, JobView

log = logging.getLogger("asyncgate.events")

APPLICATION_NAME = "asyncgate-events"
"""``application_name`` of the listening connection, as ``pg_stat_activity`` shows it."""


class JobEvents:
    """Waits for jobs to become terminal, woken by the done channel."""

    def __init__(self, url: str, store: JobStore, *, reconnect_seconds: float = 1.0) -> None:
        self.url = url
        self.store = store
        self.reconnect_seconds = reconnect_seconds
        self.connected = asyncio.Event()
        self.reconnects = 0
        """Connections made after the first (each followed by a re-read of the waited jobs)."""
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._count = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Waiters registered right now (one per waiting request)."""
        return self._count

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="job-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.wake_all()

    @contextlib.contextmanager
    def subscribe(self, job_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set when ``job_id`` may have become terminal; registered for the block."""
        woken = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(woken)
        self._count += 1
        try:
            yield woken
        finally:
            self._count -= 1
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[job_id]

    async def wait_terminal(
        self,
        job_id: uuid.UUID,
        read: Callable[[], Awaitable[JobView | None]],
        timeout: float,
    ) -> JobView | None:
        """The job as ``read`` sees it once it is terminal (or gone), or after ``timeout``.

        The waiter is registered before the first read, so a job finishing between that read
        and the wait still wakes it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.subscribe(job_id) as woken:
            view = await read()
            while view is not None and not view.status.terminal:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await woken.wait()
                woken.clear()
                view = await read()
        return view

    def wake(self, job_id: uuid.UUID) -> None:
        for woken in self._waiters.get(job_id, ()):
            woken.set()

    def wake_all(self) -> None:
        for waiters in self._waiters.values():
            for woken in waiters:
                woken.set()

    async def _recheck(self) -> None:
        """Wake the waiters of jobs that finished while nobody was listening."""
        ids = list(self._waiters)
        if not ids:
            return
        try:
            unfinished = await self.store.unfinished_among(ids)
        except Exception as exc:
            if not is_outage(exc):
                log.exception("re-reading waited jobs failed")
            self.wake_all()  # each waiter reads its own job again
            return
        for job_id in set(ids) - unfinished:
            self.wake(job_id)

    async def _listen_forever(self) -> None:
        first = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=APPLICATION_NAME,
                ) as conn:
                    await conn.execute(f"LISTEN {DONE_CHANNEL}")
                    await conn.execute(f"LISTEN {REQUEUED_CHANNEL}")
                    if not first:
                        self.reconnects += 1
                        log.info("completion events listening again; re-reading waited jobs")
                    first = False
                    self.connected.set()
                    await self._recheck()
                    self.store.forget()  # requeues announced meanwhile were missed
                    async for notify in conn.notifies():
                        with contextlib.suppress(ValueError):
                            if notify.channel == REQUEUED_CHANNEL:
                                self.store.forget(uuid.UUID(notify.payload))
                            else:
                                self.wake(uuid.UUID(notify.payload))
            except (psycopg.Error, OSError) as exc:
                if self.connected.is_set():
                    log.warning("completion events connection lost: %s", exc.__class__.__name__)
                self.connected.clear()
            await asyncio.sleep(self.reconnect_seconds)
