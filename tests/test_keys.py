"""Virtual keys at the gateway: where they may arrive, who may read which job, and what is kept."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from asyncgate.models.database import Database
from asyncgate.models.keys import KeyIdentity, KeyStore
from tests.conftest import Gateway
from tests.helpers import (
    CHAT,
    JOB_NOT_FOUND,
    KEY_PLACES,
    TRANSCRIPTIONS,
    assert_error,
    chat,
    create_key,
    disable_key,
    run,
    submit_ok,
)

Sql = Callable[..., list[tuple[Any, ...]]]
UNKNOWN = "sk-bf-" + "x" * 43


@pytest.mark.parametrize("place", list(KEY_PLACES))
def test_key_accepted_in_every_place(
    gateway: Gateway, database_url: str, sql: Sql, place: str
) -> None:
    key = create_key(database_url, "alice")
    job_id = submit_ok(gateway, CHAT, json=chat(), headers=KEY_PLACES[place](key))
    [(owner,)] = sql("SELECT owner_key_id FROM async_jobs WHERE id = %s", job_id)
    assert sql("SELECT name FROM virtual_keys WHERE id = %s", owner) == [("alice",)]
    assert gateway.wait_terminal(CHAT, job_id, headers=KEY_PLACES[place](key))["status"] == (
        "completed"
    )
    for other_place, headers in KEY_PLACES.items():
        response = gateway.poll(CHAT, job_id, headers=headers(key))
        assert response.status_code == 200, (other_place, response.text)


def test_owned_job_is_hidden_from_others(gateway: Gateway, database_url: str) -> None:
    alice = create_key(database_url, "alice")
    bob = create_key(database_url, "bob")
    job_id = submit_ok(gateway, CHAT, json=chat(), headers={"x-bf-vk": alice})
    assert gateway.wait_terminal(CHAT, job_id, headers={"x-bf-vk": alice})["status"] == (
        "completed"
    )
    for headers in ({"x-bf-vk": bob}, {"Authorization": f"Bearer {bob}"}, {}):
        error = assert_error(gateway.poll(CHAT, job_id, headers=headers), 404)
        assert error["error"]["message"] == JOB_NOT_FOUND
    assert gateway.poll(CHAT, job_id, headers={"x-api-key": alice}).status_code == 200


def test_public_job_is_readable_by_anyone(gateway: Gateway, database_url: str) -> None:
    alice = create_key(database_url, "alice")
    job_id = submit_ok(gateway, CHAT, json=chat())
    assert gateway.wait_terminal(CHAT, job_id)["status"] == "completed"
    for headers in ({}, {"Authorization": f"Bearer {alice}"}, {"x-bf-vk": alice}):
        response = gateway.poll(CHAT, job_id, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["result"]["choices"][0]["message"]["content"] == "hello"


def test_unknown_key_is_refused(gateway: Gateway, sql: Sql) -> None:
    public = submit_ok(gateway, CHAT, json=chat())
    for place, headers in KEY_PLACES.items():
        error = assert_error(gateway.submit(CHAT, chat(), headers=headers(UNKNOWN)), 400)
        assert error["error"]["message"] == "invalid virtual key", place
        error = assert_error(gateway.poll(CHAT, public, headers=headers(UNKNOWN)), 404)
        assert error["error"]["message"] == JOB_NOT_FOUND
    response = gateway.client.post(
        gateway.url + TRANSCRIPTIONS,
        files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"model": "fake/ok"},
        headers={"x-api-key": UNKNOWN},
    )
    assert_error(response, 400)
    assert sql("SELECT count(*) FROM async_jobs") == [(1,)]


def test_malformed_basic_credentials_are_refused(gateway: Gateway) -> None:
    headers = {"Authorization": "Basic !!!not-base64!!!"}
    error = assert_error(gateway.submit(CHAT, chat(), headers=headers), 400)
    assert error["error"]["message"] == "malformed Authorization header"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer dummy"},
        {"Authorization": "Bearer sk-proj-provider-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "Token sk-bf-abc"},
        {"x-api-key": "sk-ant-provider-key"},
        {"x-goog-api-key": "AIzaProviderKey"},
        {"Authorization": "Basic " + "Og=="},  # ":" - no password
    ],
    ids=[
        "placeholder",
        "provider-bearer",
        "empty-bearer",
        "unknown-scheme",
        "provider-x-api-key",
        "provider-goog",
        "empty-basic",
    ],
)
def test_values_that_are_not_virtual_keys_are_anonymous(
    gateway_factory: Callable[..., Gateway], sql: Sql, headers: dict[str, str]
) -> None:
    gateway = gateway_factory()
    job_id = submit_ok(gateway, CHAT, json=chat(), headers=headers)
    assert sql("SELECT owner_key_id FROM async_jobs WHERE id = %s", job_id) == [(None,)]
    assert gateway.wait_terminal(CHAT, job_id)["status"] == "completed"
    strict = gateway_factory(auth={"required": True})
    assert_error(strict.submit(CHAT, chat(), headers=headers), 401)


def test_a_key_in_basic_user_name_is_not_a_key(
    gateway: Gateway, database_url: str, sql: Sql
) -> None:
    key = create_key(database_url, "frank")
    as_user = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    job_id = submit_ok(gateway, CHAT, json=chat(), headers=as_user)
    assert sql("SELECT owner_key_id FROM async_jobs WHERE id = %s", job_id) == [(None,)]


def test_the_same_key_in_several_places_counts_once(gateway: Gateway, database_url: str) -> None:
    key = create_key(database_url, "gina")
    headers = {"Authorization": f"Bearer {key}", "x-bf-vk": key, "x-goog-api-key": key}
    job_id = submit_ok(gateway, CHAT, json=chat(), headers=headers)
    assert gateway.wait_terminal(CHAT, job_id, headers={"x-api-key": key})["status"] == "completed"


def test_two_different_keys_are_refused(gateway: Gateway, database_url: str, sql: Sql) -> None:
    alice = create_key(database_url, "alice")
    bob = create_key(database_url, "bob")
    headers = {"Authorization": f"Bearer {alice}", "x-bf-vk": bob}
    error = assert_error(gateway.submit(CHAT, chat(), headers=headers), 400)
    assert "two different virtual keys" in error["error"]["message"]
    assert alice not in error["error"]["message"] and bob not in error["error"]["message"]
    assert sql("SELECT count(*) FROM async_jobs") == [(0,)]


def test_disabled_key_is_refused(gateway: Gateway, database_url: str) -> None:
    key = create_key(database_url, "carol")
    job_id = submit_ok(gateway, CHAT, json=chat(), headers={"x-bf-vk": key})
    assert gateway.wait_terminal(CHAT, job_id, headers={"x-bf-vk": key})["status"] == "completed"
    assert disable_key(database_url, "carol")
    assert not disable_key(database_url, "nobody")
    error = assert_error(gateway.submit(CHAT, chat(), headers={"x-bf-vk": key}), 400)
    assert error["error"]["message"] == "invalid virtual key"
    error = assert_error(gateway.poll(CHAT, job_id, headers={"x-bf-vk": key}), 404)
    assert error["error"]["message"] == JOB_NOT_FOUND
    assert_error(gateway.poll(CHAT, job_id), 404)


def test_required_auth(gateway_factory: Callable[..., Gateway], database_url: str) -> None:
    gateway = gateway_factory(auth={"required": True})
    key = create_key(database_url, "dave")
    error = assert_error(gateway.submit(CHAT, chat()), 401)
    assert "key" in error["error"]["message"]
    response = gateway.client.post(
        gateway.url + TRANSCRIPTIONS,
        files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"model": "fake/ok"},
    )
    assert_error(response, 401)
    job_id = submit_ok(gateway, CHAT, json=chat(), headers={"Authorization": f"Bearer {key}"})
    assert_error(gateway.poll(CHAT, job_id), 401)
    assert_error(gateway.submit(CHAT, chat(), headers={"x-bf-vk": UNKNOWN}), 400)
    assert_error(gateway.poll(CHAT, job_id, headers={"x-bf-vk": UNKNOWN}), 404)
    done = gateway.wait_terminal(CHAT, job_id, headers={"x-bf-vk": key})
    assert done["status"] == "completed"


def test_only_the_hash_of_a_key_is_stored(gateway: Gateway, database_url: str, sql: Sql) -> None:
    key = create_key(database_url, "erin")
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"x-bf-vk": key},
        {"x-api-key": key},
        {"x-goog-api-key": key},
        KEY_PLACES["basic"](key),
    ):
        job_id = submit_ok(gateway, CHAT, json=chat(), headers=headers)
        assert gateway.wait_terminal(CHAT, job_id, headers=headers)["status"] == "completed"
    job_id = submit_ok(
        gateway,
        TRANSCRIPTIONS,
        files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"model": "fake/ok"},
        headers={"x-bf-vk": key},
    )
    assert gateway.wait_terminal(TRANSCRIPTIONS, job_id, headers={"x-bf-vk": key})

    [(stored,)] = sql("SELECT key_hash FROM virtual_keys WHERE name = 'erin'")
    assert bytes(stored) == hashlib.sha256(key.encode()).digest()
    secret = key.removeprefix("sk-bf-")
    tables = [row[0] for row in sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert {"async_jobs", "async_job_files", "virtual_keys"} <= set(tables)
    for table in tables:
        leaks = sql(
            f'SELECT count(*) FROM "{table}" t '
            "WHERE strpos(t::text, %s) > 0 OR strpos(t::text, %s) > 0",
            secret,
            secret.encode().hex(),
        )
        assert leaks == [(0,)], f"{table} holds the key"
    assert sql("SELECT count(*) FROM async_jobs WHERE owner_key_id IS NOT NULL") == [(6,)]


def test_a_flood_of_unknown_keys_cannot_evict_a_known_one(database_url: str, sql: Sql) -> None:
    """The miss cache is bounded apart from the hit cache: after thousands of random keys the
    known key is still answered from the cache (it was disabled meanwhile, so a fresh lookup
    would refuse it), and a malformed value never reaches the database."""
    key = create_key(database_url, "hank")

    async def flood() -> tuple[KeyIdentity | None, KeyIdentity | None, KeyIdentity | None]:
        db = Database(database_url, pool_size=2)
        await db.open()
        try:
            keys = KeyStore(db, cache_seconds=60.0, max_hits=10, max_misses=50)
            first = await keys.lookup(key)
            sql("UPDATE virtual_keys SET disabled_at = now() WHERE name = 'hank'")
            for _ in range(2_000):
                assert await keys.lookup("sk-bf-" + secrets.token_urlsafe(32)) is None
            cached = await keys.lookup(key)
            fresh = await KeyStore(db).lookup(key)
            return first, cached, fresh
        finally:
            await db.close()

    first, cached, fresh = run(flood)
    assert first is not None and cached == first
    assert first.is_admin is False
    assert fresh is None
