"""The shared resources handed to handlers: built once by the composition root, never global."""

from __future__ import annotations

from dataclasses import dataclass

from asyncgate.config import Settings
from models.committer import GroupCommitter
from models.database import Database
from models.jobs import JobStore
from models.keys import KeyStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    jobs: JobStore
    keys: KeyStore
    committer: GroupCommitter
