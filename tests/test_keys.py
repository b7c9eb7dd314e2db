"""Virtual keys at the gateway: where they may arrive, who may read which job, and what is kept."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

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


@pytest.mark.parametrize(
    "authorization",
    ["Basic !!!not-base64!!!", "Token sk-bf-abc", "Bearer ", "Basic " + "Og=="],
    ids=["bad-base64", "unknown-scheme", "empty-bearer", "empty-basic"],
)
def test_malformed_authorization_is_refused(gateway: Gateway, authorization: str) -> None:
    error = assert_error(
        gateway.submit(CHAT, chat(), headers={"Authorization": authorization}), 400
    )
    assert error["error"]["message"] == "invalid virtual key"


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
    assert sql("SELECT count(*) FROM async_jobs WHERE owner_key_id IS NOT NULL") == [(5,)]
