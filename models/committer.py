"""Group commit: concurrent submissions share one transaction, each answered after its commit.

A few flusher tasks take whatever submissions are queued (up to ``max_batch``) and commit them
together. Under light load a batch holds one job and nothing waits for a timer; under heavy
load batches grow by themselves while the previous commit is in flight. A failed batch fails
only its own submissions; a batch refused for its data is retried job by job, so one bad row
cannot sink its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

import psycopg

from asyncgate.errors import BadRequest, ServiceUnavailable
from models.jobs import JobStore, NewJob

log = logging.getLogger("asyncgate.committer")


class GroupCommitter:
    """Batches :meth:`JobStore.insert_batch` calls; :meth:`submit` returns once committed."""

    def __init__(self, store: JobStore, *, flushers: int = 3, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[NewJob, asyncio.Future[datetime]]] = asyncio.Queue()
        self._flusher_count = flushers
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name=f"group-commit-{i}")
            for i in range(self._flusher_count)
        ]

    async def stop(self) -> None:
        """Commit what is queued, then stop the flushers."""
        while not self._queue.empty():
            await asyncio.sleep(0.001)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def submit(self, job: NewJob) -> datetime:
        """Queue ``job`` and wait for its commit; returns its ``created_at``."""
        if not self._tasks:
            raise RuntimeError("GroupCommitter.start() was not called")
        future: asyncio.Future[datetime] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def _flush_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[NewJob, asyncio.Future[datetime]]]) -> None:
        try:
            created = await self.store.insert_batch([job for job, _ in batch])
        except psycopg.DataError as exc:
            if len(batch) > 1:
                for item in batch:
                    await self._commit([item])
                return
            self._fail(
                batch, BadRequest(f"the request cannot be stored: {exc.diag.message_primary}")
            )
        except Exception as exc:
            if not isinstance(exc, ServiceUnavailable):
                log.exception("batch of %d submissions failed", len(batch))
            self._fail(batch, exc)
        else:
            for job, future in batch:
                if not future.done():
                    future.set_result(created[job.id])

    @staticmethod
    def _fail(batch: list[tuple[NewJob, asyncio.Future[datetime]]], exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
