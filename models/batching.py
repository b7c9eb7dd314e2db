"""Gathering concurrent calls into batches: one statement and one round trip per batch.

A few flusher tasks take whatever items are queued (up to ``max_batch`` items and, with a
``cost`` function, ``max_batch_cost`` of their summed cost, such as bytes) and flush them
together. Under light load a batch holds one item and nothing waits for a timer; under heavy load
batches grow by themselves while the previous flush is in flight. A failed flush fails only the
callers whose items were in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
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
    A batch exceeds ``max_batch_cost`` only when it is a single item: items are taken in
    submission order and the first item that would overflow a batch starts the next one.
    """

    def __init__(
        self,
        flush: Flush[T, R],
        *,
        name: str,
        flushers: int = 3,
        max_batch: int = 256,
        cost: Callable[[T], int] | None = None,
        max_batch_cost: int | None = None,
    ) -> None:
        self._flush = flush
        self.name = name
        self.max_batch = max_batch
        self.max_batch_cost = max_batch_cost
        self._cost = cost
        self._flusher_count = flushers
        self._items: deque[tuple[T, int, asyncio.Future[R]]] = deque()
        self._queued = asyncio.Event()
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name=f"{self.name}-{i}")
            for i in range(self._flusher_count)
        ]

    async def stop(self) -> None:
        """Flush what is queued and wait for batches in flight, then stop the flushers."""
        await self._idle.wait()
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
        cost = 0 if self._cost is None else self._cost(item)
        self._items.append((item, cost, future))
        self._unfinished += 1
        self._idle.clear()
        self._queued.set()
        return await future

    def _take(self) -> list[tuple[T, int, asyncio.Future[R]]]:
        first = self._items.popleft()
        batch = [first]
        total = first[1]
        limit = self.max_batch_cost
        while self._items and len(batch) < self.max_batch:
            if limit is not None and total + self._items[0][1] > limit:
                break
            entry = self._items.popleft()
            total += entry[1]
            batch.append(entry)
        if not self._items:
            self._queued.clear()
        return batch

    async def _flush_forever(self) -> None:
        while True:
            while not self._items:
                await self._queued.wait()
            batch = self._take()
            try:
                await self._flush_batch(batch)
            finally:
                self._unfinished -= len(batch)
                if self._unfinished == 0:
                    self._idle.set()

    async def _flush_batch(self, batch: list[tuple[T, int, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _, _ in batch])
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
