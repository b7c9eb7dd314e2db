"""The local provider's process pool, seen from the worker's event loop.

Inference runs in ``processes`` spawned processes, so it never blocks the loop; each job holds
one slot of a shared array of stop flags while it runs. When the awaiting job is cancelled (a
client's cancel, its deadline, a shutdown) its flag is raised and the process stops at the next
step it checks between (a generated token, a sentence, a segment, a page); the slot is free
again only once the process has let go of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from asyncgate.kinds import Kind
from asyncgate.models.jobs import NewFile
from asyncgate.worker.local import child
from asyncgate.worker.local.child import Answer, LocalFailure
from asyncgate.worker.upstream import UpstreamError, UpstreamReply

log = logging.getLogger("asyncgate.worker")


class LocalPool:
    """Runs local jobs in a pool of ``processes`` processes; :meth:`close` when done."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        context = multiprocessing.get_context("spawn")
        self.flags = context.Array("b", processes, lock=False)
        self.free = list(range(processes))
        self.slots = asyncio.Semaphore(processes)
        self._context = context
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=self._context,
            initializer=child.initialise,
            initargs=(self.flags,),
        )

    async def send(
        self, kind: Kind, body: dict[str, Any], files: list[NewFile], *, timeout: float
    ) -> UpstreamReply:
        """Run one job in the pool: the reply an upstream would give, or UpstreamError.

        ``timeout`` bounds the run (waiting for a free process not included); running past it
        is not transient, since the same job would take as long again."""
        await self.slots.acquire()
        slot = self.free.pop()
        self.flags[slot] = 0
        task = asyncio.ensure_future(self._run(slot, kind, body, files))
        try:
            async with asyncio.timeout(timeout):
                answer = await asyncio.shield(task)
        except asyncio.CancelledError:
            self.flags[slot] = 1
            raise
        except TimeoutError as exc:
            self.flags[slot] = 1
            raise UpstreamError(
                f"the local model did not finish within {timeout:g}s",
                status_code=504,
                error_type="upstream_timeout",
            ) from exc
        return _reply(answer)

    async def _run(
        self, slot: int, kind: Kind, body: dict[str, Any], files: list[NewFile]
    ) -> Answer | LocalFailure:
        payload = [(f.field, f.filename, f.content_type, f.data) for f in files]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, child.run, slot, kind.value, body, payload
            )
        except BrokenProcessPool:
            log.warning("a local inference process died; starting a new pool")
            self._replace_executor()
            return LocalFailure(503, "the local inference process died", transient=True)
        finally:
            self.free.append(slot)
            self.slots.release()

    def _replace_executor(self) -> None:
        broken, self._executor = self._executor, self._new_executor()
        broken.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop every running job at its next step, then the processes."""
        for slot in range(self.processes):
            self.flags[slot] = 1
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)


def _reply(answer: Answer | LocalFailure) -> UpstreamReply:
    if isinstance(answer, LocalFailure):
        raise UpstreamError(
            answer.message,
            status_code=answer.status_code,
            error_type="invalid_request_error" if answer.status_code == 400 else "local_error",
            param=answer.param,
            transient=answer.transient,
        )
    if answer.body is not None:
        return UpstreamReply(200, body=answer.body, content_type=answer.content_type)
    return UpstreamReply(200, result=answer.result)
