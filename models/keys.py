"""Virtual keys: create, list, disable, look up by SHA-256; the key itself is never kept."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import psycopg

from asyncgate.models.database import Database

V = TypeVar("V")

KEY_PREFIX = "sk-bf-"
KEY_FORM = re.compile(r"sk-bf-[A-Za-z0-9_-]{43}")
"""Every key this store makes: the prefix and 32 random bytes, URL-safe base64."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as ``asyncgate keys list`` shows it."""

    id: int
    name: str
    created_at: datetime
    disabled_at: datetime | None
    is_admin: bool


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """Who an enabled key is: the id that owns its jobs, and whether it may list every job."""

    id: int
    is_admin: bool


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


# Create a key: only the hash is written.
INSERT_KEY = "INSERT INTO virtual_keys (name, key_hash, is_admin) VALUES (%s, %s, %s) RETURNING id"
# For `asyncgate keys list`.
LIST_KEYS = "SELECT id, name, created_at, disabled_at, is_admin FROM virtual_keys ORDER BY id"
# Disable by name; disabled keys stop owning and reading jobs.
DISABLE_KEY = """
UPDATE virtual_keys SET disabled_at = coalesce(disabled_at, now()) WHERE name = %s RETURNING id
"""
# A webhook endpoint's owner is named by its key's name; only an active key may own one.
FIND_KEY_BY_NAME = "SELECT id FROM virtual_keys WHERE name = %s AND disabled_at IS NULL"
# Authenticate: the hash is the lookup; the stored hash is compared again in constant time.
FIND_KEY = """
SELECT id, key_hash, is_admin FROM virtual_keys WHERE key_hash = %s AND disabled_at IS NULL
"""


class DuplicateKeyName(Exception):
    """A key with that name already exists."""


class KeyStore:
    """Virtual keys in PostgreSQL, with a short per-process cache of lookups.

    Known keys and unknown ones are cached apart, each a bounded LRU: a flood of random keys
    fills only the miss cache and can never push a valid key out. A value that is not of the
    form this store issues is refused without a query.
    """

    def __init__(
        self,
        db: Database,
        *,
        cache_seconds: float = 0.0,
        max_hits: int = 10_000,
        max_misses: int = 1_000,
    ) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._hits = _Lru[KeyIdentity](max_hits)
        self._misses = _Lru[None](max_misses)

    async def create(self, name: str, *, admin: bool = False) -> tuple[int, str]:
        """Make a key named ``name`` (an admin key with ``admin``); returns its id and the key,
        which is shown only this once."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        async with self.db.connection() as conn:
            try:
                cur = await conn.execute(INSERT_KEY, (name, hash_key(key), admin))
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

    async def id_of(self, name: str) -> int | None:
        """The id of the active key called ``name``; None when there is none."""
        rows = await self.db.read(FIND_KEY_BY_NAME, (name,))
        return rows[0][0] if rows else None

    async def lookup(self, key: str) -> KeyIdentity | None:
        """The id and admin flag of an enabled key; None for an unknown, disabled or malformed
        one."""
        if not KEY_FORM.fullmatch(key):
            return None
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._hits.get(digest, now)
        if hit is not None:
            return hit
        if self._misses.contains(digest, now):
            return None
        rows = await self.db.read(FIND_KEY, (digest,))
        row = rows[0] if rows else None
        identity = (
            KeyIdentity(row[0], row[2])
            if row is not None and hmac.compare_digest(bytes(row[1]), digest)
            else None
        )
        if self.cache_seconds > 0:
            expires = now + self.cache_seconds
            if identity is None:
                self._misses.put(digest, None, expires)
            else:
                self._hits.put(digest, identity, expires)
        return identity


class _Lru(Generic[V]):
    """At most ``size`` entries, each until its expiry; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()

    def _live(self, key: bytes, now: float) -> tuple[float, V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def get(self, key: bytes, now: float) -> V | None:
        entry = self._live(key, now)
        return None if entry is None else entry[1]

    def contains(self, key: bytes, now: float) -> bool:
        return self._live(key, now) is not None

    def put(self, key: bytes, value: V, expires: float) -> None:
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
