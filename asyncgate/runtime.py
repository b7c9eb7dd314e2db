"""Building and tearing down the shared resources, in dependency order.

API side: pool -> stores -> group committer -> completion events (one listening connection).
Worker side: pool -> store -> notifications -> HTTP session -> upstream and local process
pools -> executor -> worker, plus the sweeper. Each is created here, passed
explicitly to what needs it, and closed here in reverse order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from asyncgate.config import Settings
from asyncgate.metrics import Metrics
from asyncgate.models.committer import group_committer
from asyncgate.models.database import Database
from asyncgate.models.events import JobEvents
from asyncgate.models.jobs import JobStore
from asyncgate.models.keys import KeyStore
from asyncgate.models.notifications import JobNotifications
from asyncgate.models.webhooks import WebhookStore
from asyncgate.services import Services
from asyncgate.webhooks import SecretBox
from asyncgate.worker.execute import Executor
from asyncgate.worker.local import LocalPool
from asyncgate.worker.loop import Worker
from asyncgate.worker.sweeper import Sweeper
from asyncgate.worker.upstream import Upstream
from asyncgate.worker.webhooks import Deliverer, Sender, client_session


@contextlib.asynccontextmanager
async def open_database(
    settings: Settings, url: str, *, generic_plans: bool = False
) -> AsyncIterator[Database]:
    """The pool on ``url``; session work goes to ``database.listen_url`` when that is set.
    ``generic_plans``: see :class:`Database` (for a process that only runs a worker)."""
    listen_url = settings.database.listen_url
    db = Database(
        url,
        listen_url=listen_url.reveal() if listen_url is not None else None,
        pool_size=settings.database.pool_size,
        connect_timeout=settings.database.connect_timeout,
        generic_plans=generic_plans,
    )
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def api_services(
    settings: Settings, db: Database, metrics: Metrics, *, local_worker: Worker | None = None
) -> AsyncIterator[Services]:
    """What the HTTP handlers need; the committer flushes its queue on the way out.

    With a ``local_worker`` (``serve``), each commit wakes it directly.
    """
    store = JobStore(db, idempotency_window_seconds=settings.jobs.idempotency_window_seconds)
    committer = group_committer(
        store,
        max_batch_bytes=settings.database.group_commit_max_bytes,
        on_commit=local_worker.notifications.event.set if local_worker else None,
    )
    events = JobEvents(db.listen_url, store)
    committer.start()
    events.start()
    try:
        yield Services(
            settings=settings,
            db=db,
            jobs=store,
            keys=KeyStore(db, cache_seconds=settings.auth.key_cache_seconds),
            committer=committer,
            events=events,
            metrics=metrics,
            webhooks=WebhookStore(db, secret_box(settings)),
        )
    finally:
        await events.stop()
        await committer.stop()


def secret_box(settings: Settings) -> SecretBox | None:
    """The sealer of webhook secrets, or None when ``webhooks.secret_key`` is unset."""
    key = settings.webhooks.secret_key
    return None if key is None else SecretBox(key.reveal())


@dataclass
class WorkerRuntime:
    worker: Worker
    sweeper: Sweeper
    deliverer: Deliverer | None
    """None when ``webhooks.secret_key`` is unset: deliveries wait for a process that has it."""


@contextlib.asynccontextmanager
async def worker_runtime(
    settings: Settings, db: Database, metrics: Metrics
) -> AsyncIterator[WorkerRuntime]:
    """A running worker and sweeper; leaving the block stops them gracefully."""
    store = JobStore(db)
    notifications = JobNotifications(db.listen_url)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=True) as session:
        upstream = Upstream(session, max_response_bytes=settings.worker.max_response_bytes)
        local = {
            name: LocalPool(provider.processes)
            for name, provider in settings.providers.items()
            if provider.local
        }
        executor = Executor(upstream, store, settings.providers, settings.worker, metrics, local)
        worker = Worker(store, executor, notifications, settings.worker, metrics)
        box = secret_box(settings)
        webhooks = WebhookStore(db, box)
        sweeper = Sweeper(
            store,
            settings.sweeper,
            webhooks,
            webhook_retention_seconds=settings.webhooks.retention_days * 86400,
        )
        async with contextlib.AsyncExitStack() as stack:
            deliverer = None
            if box is not None:
                hook_session, resolver = client_session(settings.webhooks)
                await stack.enter_async_context(hook_session)
                sender = Sender(hook_session, box, settings.webhooks, resolver)
                deliverer = Deliverer(
                    webhooks,
                    sender,
                    settings.webhooks,
                    metrics,
                    owner=worker.owner,
                    public_url=settings.server.public_url,
                    wake=notifications.webhooks,
                )
            notifications.start()
            worker.start()
            sweeper.start()
            if deliverer is not None:
                deliverer.start()
            try:
                yield WorkerRuntime(worker, sweeper, deliverer)
            finally:
                if deliverer is not None:
                    await deliverer.stop()
                await sweeper.stop()
                await worker.stop()
                await notifications.stop()
                for pool in local.values():
                    await pool.close()
