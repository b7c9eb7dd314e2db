"""LISTEN for new work, reconnecting by itself after a database outage.

A notification is only a hint that work may be waiting: the claim query decides. When the
listening connection is down, waiters fall back to their polling interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from asyncgate.models.jobs import NOTIFY_CHANNEL

log = logging.getLogger("asyncgate.notifications")


class JobNotifications:
    """Sets :attr:`event` whenever a job may be ready to claim."""

    def __init__(self, url: str, *, reconnect_seconds: float = 1.0) -> None:
        self.url = url
        self.reconnect_seconds = reconnect_seconds
        self.event = asyncio.Event()
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="job-notifications")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, timeout: float) -> None:
        """Return when notified or after ``timeout`` seconds, whichever is first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.connected.set()
                    self.event.set()  # work may have arrived while we were not listening
                    async for _ in conn.notifies():
                        self.event.set()
            except (psycopg.Error, OSError) as exc:
                if self.connected.is_set():
                    log.warning("notification connection lost: %s", exc.__class__.__name__)
                self.connected.clear()
            self.event.set()
            await asyncio.sleep(self.reconnect_seconds)
