"""The sweeper: deletes expired jobs (and, by cascade, their files) in bounded batches, and
webhook deliveries (with their attempt log) past ``webhooks.retention_days``.

Polls already hide expired jobs, so the sweeper only reclaims space. Any number of sweepers may
run at once: each batch locks its rows with SKIP LOCKED, so two never fight over the same rows.
"""

from __future__ import annotations

import asyncio
import logging

from asyncgate.config import SweeperConfig
from asyncgate.models.database import is_outage
from asyncgate.models.jobs import JobStore
from asyncgate.models.webhooks import WebhookStore

log = logging.getLogger("asyncgate.sweeper")


class Sweeper:
    def __init__(
        self,
        store: JobStore,
        config: SweeperConfig,
        webhooks: WebhookStore | None = None,
        *,
        webhook_retention_seconds: float = 30 * 86400.0,
    ) -> None:
        self.store = store
        self.config = config
        self.webhooks = webhooks
        self.webhook_retention_seconds = webhook_retention_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def sweep_once(self) -> int:
        """Delete every job expired by now, batch by batch, ``pause_seconds`` apart; returns
        how many were deleted."""
        total = 0
        while True:
            deleted = await self.store.sweep(self.config.batch)
            total += deleted
            if deleted < self.config.batch:
                return total
            if self.config.pause_seconds > 0:
                await asyncio.sleep(self.config.pause_seconds)

    async def sweep_deliveries_once(self) -> int:
        """Delete every webhook delivery past retention, batch by batch; returns how many."""
        total = 0
        while self.webhooks is not None:
            deleted = await self.webhooks.sweep(self.webhook_retention_seconds, self.config.batch)
            total += deleted
            if deleted < self.config.batch:
                break
        return total

    async def _sweep_forever(self) -> None:
        while True:
            try:
                deleted = await self.sweep_once()
                if deleted:
                    log.info("sweeper deleted %d expired job(s)", deleted)
                deliveries = await self.sweep_deliveries_once()
                if deliveries:
                    log.info("sweeper deleted %d webhook delivery(ies) past retention", deliveries)
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("sweep failed")
            await asyncio.sleep(self.config.interval_seconds)
