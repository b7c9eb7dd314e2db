"""Gathering concurrent calls into batches: one statement and one round trip per batch.

A few flusher tasks take whatever items are queued (up to ``max_batch``) and flush them
together. Under light load a batch holds one item and nothing waits for a timer; under heavy load
batches grow by themselves while the previous flush is in flight. A failed flush fails only the
callers whose items were in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("asyncgate.batching")

Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Batcher(Generic[T, R]):
    """``await batcher.submit(item)`` returns ``item``'s result once its batch is flushed.

    ``flush(items)`` returns one result per item, in order; an exception in that list is raised
    to that item's caller only, an exception raised by ``flush`` to every caller in the batch.
    """

    def __init__(
        self, flush: Flush[T, R], *, name: str, flushers: int = 3, max_batch: int = 256
    ) -> None:
        self._flush = flush
        self.name = name
        self.max_batch = max_batch
        self._flusher_count = flushers
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name=f"{self.name}-{i}")
            for i in range(self._flusher_count)
        ]

    async def stop(self) -> None:
        """Flush what is queued and wait for batches in flight, then stop the flushers."""
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def submit(self, item: T) -> R:
        if not self._tasks:
            raise RuntimeError(f"{self.name}: start() was not called")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _flush_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._flush_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _flush_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
