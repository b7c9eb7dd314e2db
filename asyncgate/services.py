"""The shared resources handed to handlers: built once by the composition root, never global."""

from __future__ import annotations

from dataclasses import dataclass

from asyncgate.config import Settings
from asyncgate.metrics import Metrics
from asyncgate.models.batching import Batcher
from asyncgate.models.database import Database
from asyncgate.models.events import JobEvents
from asyncgate.models.jobs import Committed, JobStore, NewJob
from asyncgate.models.keys import KeyStore
from asyncgate.models.webhooks import WebhookStore


@dataclass(frozen=True)
class Services:
    """What every handler may use; ``events`` wakes long-polls when their job ends."""

    settings: Settings
    db: Database
    jobs: JobStore
    keys: KeyStore
    committer: Batcher[NewJob, Committed]
    events: JobEvents
    metrics: Metrics
    webhooks: WebhookStore
