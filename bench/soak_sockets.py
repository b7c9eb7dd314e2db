"""Hostile connections held against the API during the soak run: silent sockets that never
send a byte, and a slowloris client that sends a request's headers one line at a time and never
finishes them. The soak only opens them and counts what the server does (closing them is the
server's business); a closed connection is opened again after a pause, and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from dataclasses import dataclass, field

SILENT_SOCKETS = 1000
SLOWLORIS_SOCKETS = 50
SLOWLORIS_LINE_SECONDS = 2.0
REOPEN_SECONDS = 5.0
OPEN_CONCURRENCY = 50


def raise_file_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's soft limit on open files toward ``wanted`` (at most the hard
    limit); children started afterwards inherit it. Returns the (before, after) soft limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, max(soft, target)


@dataclass
class SocketCounts:
    """What happened to one kind of hostile connection."""

    opened: int = 0
    open_failures: int = 0
    closed_by_server: int = 0
    open_now: int = 0
    peak_open: int = 0
    """Most of them open at once."""
    errors: dict[str, int] = field(default_factory=dict)

    def failed(self, exc: BaseException) -> None:
        name = exc.__class__.__name__
        self.errors[name] = self.errors.get(name, 0) + 1


async def _open(
    host: str, port: int, counts: SocketCounts, gate: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError) as exc:
            counts.open_failures += 1
            counts.failed(exc)
            return None
    counts.opened += 1
    return reader, writer


async def _silent(host: str, port: int, counts: SocketCounts, gate: asyncio.Semaphore) -> None:
    while True:
        pair = await _open(host, port, counts, gate)
        if pair is not None:
            reader, writer = pair
            counts.open_now += 1
            counts.peak_open = max(counts.peak_open, counts.open_now)
            try:
                # Whatever arrives (EOF, an error page, a reset) means the server let go.
                with contextlib.suppress(OSError):
                    await reader.read(1)
                counts.closed_by_server += 1
            finally:
                counts.open_now -= 1
                writer.close()
        await asyncio.sleep(REOPEN_SECONDS)


async def _slowloris(host: str, port: int, counts: SocketCounts, gate: asyncio.Semaphore) -> None:
    while True:
        pair = await _open(host, port, counts, gate)
        if pair is not None:
            reader, writer = pair
            counts.open_now += 1
            counts.peak_open = max(counts.peak_open, counts.open_now)
            closed = asyncio.create_task(reader.read(1))
            try:
                writer.write(b"POST /v1/async/chat/completions HTTP/1.1\r\nHost: soak\r\n")
                line = 0
                while not closed.done():
                    await asyncio.wait({closed}, timeout=SLOWLORIS_LINE_SECONDS)
                    if closed.done():
                        break
                    line += 1
                    writer.write(f"X-Slow-{line}: {'a' * 16}\r\n".encode())
                    await writer.drain()
                counts.closed_by_server += 1
            except OSError:
                counts.closed_by_server += 1
            finally:
                counts.open_now -= 1
                closed.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await closed
                writer.close()
        await asyncio.sleep(REOPEN_SECONDS)


@dataclass
class HostileClients:
    """Runs the silent sockets and the slowloris client until :meth:`stop`."""

    host: str
    port: int
    silent: SocketCounts = field(default_factory=SocketCounts)
    slowloris: SocketCounts = field(default_factory=SocketCounts)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, silent: int = SILENT_SOCKETS, slow: int = SLOWLORIS_SOCKETS) -> None:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        self._tasks = [
            asyncio.create_task(_silent(self.host, self.port, self.silent, gate))
            for _ in range(silent)
        ] + [
            asyncio.create_task(_slowloris(self.host, self.port, self.slowloris, gate))
            for _ in range(slow)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def figures(self) -> dict[str, object]:
        return {"silent": vars(self.silent), "slowloris": vars(self.slowloris)}
