"""LISTEN for new work, and for jobs that ended, reconnecting by itself after a database outage.

A notification is only a hint that work may be waiting: the claim query decides. When the
listening connection is down, waiters fall back to their polling interval. The same connection
hears the done channel, so a worker learns at once that a job it runs was cancelled (without
it, at its next lease renewal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import psycopg

from asyncgate.models.jobs import DONE_CHANNEL, NOTIFY_CHANNEL
from asyncgate.models.webhooks import WEBHOOK_CHANNEL

log = logging.getLogger("asyncgate.notifications")


class JobNotifications:
    """Sets :attr:`event` whenever a job may be ready to claim and :attr:`webhooks` whenever a
    webhook delivery may be due, and calls :attr:`on_done` with the id of every job that became
    terminal."""

    def __init__(self, url: str, *, reconnect_seconds: float = 1.0) -> None:
        self.url = url
        self.on_done: Callable[[uuid.UUID], None] | None = None
        self.reconnect_seconds = reconnect_seconds
        self.event = asyncio.Event()
        self.webhooks = asyncio.Event()
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

    def _done(self, payload: str) -> None:
        if self.on_done is None:
            return
        try:
            job_id = uuid.UUID(payload)
        except ValueError:
            return
        self.on_done(job_id)

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    await conn.execute(f"LISTEN {DONE_CHANNEL}")
                    await conn.execute(f"LISTEN {WEBHOOK_CHANNEL}")
                    self.connected.set()
                    self.event.set()  # work may have arrived while we were not listening
                    self.webhooks.set()
                    async for notify in conn.notifies():
                        if notify.channel == DONE_CHANNEL:
                            self._done(notify.payload)
                        elif notify.channel == WEBHOOK_CHANNEL:
                            self.webhooks.set()
                        else:
                            self.event.set()
            except (psycopg.Error, OSError) as exc:
                if self.connected.is_set():
                    log.warning("notification connection lost: %s", exc.__class__.__name__)
                self.connected.clear()
            self.event.set()
            self.webhooks.set()
            await asyncio.sleep(self.reconnect_seconds)
