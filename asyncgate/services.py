"""The shared resources handed to handlers: built once by the composition root, never global."""

from __future__ import annotations

from dataclasses import dataclass

from asyncgate.config import Settings
from asyncgate.models.batching import Batcher
from asyncgate.models.database import Database
from asyncgate.models.jobs import Committed, JobStore, NewJob
from asyncgate.models.keys import KeyStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    jobs: JobStore
    keys: KeyStore
    committer: Batcher[NewJob, Committed]
