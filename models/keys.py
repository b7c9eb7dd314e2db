"""Virtual keys: create, list, disable, look up by SHA-256; the key itself is never kept."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg
from asyncgate.models.database import Database

KEY_PREFIX = "sk-bf-"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    created_at: datetime
    disabled_at: datetime | None


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


# Create a key: only the hash is written.
INSERT_KEY = "INSERT INTO virtual_keys (name, key_hash) VALUES (%s, %s) RETURNING id"
# For `asyncgate keys list`.
LIST_KEYS = "SELECT id, name, created_at, disabled_at FROM virtual_keys ORDER BY id"
# Disable by name; disabled keys stop owning and reading jobs.
DISABLE_KEY = """
UPDATE virtual_keys SET disabled_at = coalesce(disabled_at, now()) WHERE name = %s RETURNING id
"""
# Authenticate: the hash is the lookup; the stored hash is compared again in constant time.
FIND_KEY = "SELECT id, key_hash FROM virtual_keys WHERE key_hash = %s AND disabled_at IS NULL"


class DuplicateKeyName(Exception):
    """A key with that name already exists."""


class KeyStore:
    """Virtual keys in PostgreSQL, with a short per-process cache of lookups."""

    def __init__(self, db: Database, *, cache_seconds: float = 0.0) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, int | None]] = {}

    async def create(self, name: str) -> tuple[int, str]:
        """Make a key named ``name``; returns its id and the key, which is shown only this once."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        async with self.db.connection() as conn:
            try:
                cur = await conn.execute(INSERT_KEY, (name, hash_key(key)))
            except psycopg.errors.UniqueViolation as exc:
                raise DuplicateKeyName(name) from exc
            row = await cur.fetchone()
        assert row is not None
        return row[0], key

    async def list(self) -> list[KeyInfo]:
        async with self.db.connection() as conn:
            cur = await conn.execute(LIST_KEYS)
            return [KeyInfo(*row) for row in await cur.fetchall()]

    async def disable(self, name: str) -> bool:
        """Disable the key called ``name``; False when there is none."""
        async with self.db.connection() as conn:
            cur = await conn.execute(DISABLE_KEY, (name,))
            return await cur.fetchone() is not None

    async def lookup(self, key: str) -> int | None:
        """The id of an enabled key, or None for an unknown or disabled one."""
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        rows = await self.db.read(FIND_KEY, (digest,))
        row = rows[0] if rows else None
        key_id = row[0] if row is not None and hmac.compare_digest(bytes(row[1]), digest) else None
        if self.cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_seconds, key_id)
        return key_id
