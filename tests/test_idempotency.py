"""Idempotency-Key on submits, through real HTTP and the real group commit on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import requests

from asyncgate.kinds import Kind
from asyncgate.models.jobs import Committed, IdempotencyKeyReused, JobStore, NewJob
from tests.conftest import Gateway
from tests.helpers import (
    CHAT,
    EMBEDDINGS,
    TRANSCRIPTIONS,
    assert_error,
    chat,
    create_key,
    with_store,
)

Sql = Callable[..., list[tuple[Any, ...]]]
AUDIO = bytes(range(256)) * 4


def post(gateway: Gateway, key: str | None, body: Any = None, path: str = CHAT, **kw: Any) -> Any:
    headers = dict(kw.pop("headers", {}))
    if key is not None:
        headers["Idempotency-Key"] = key
    return gateway.client.post(gateway.url + path, json=body, headers=headers, **kw)


def jobs(sql: Sql) -> int:
    [(count,)] = sql("SELECT count(*) FROM async_jobs")
    return int(count)


def test_same_key_and_body_replays_the_first_job(gateway: Gateway, sql: Sql) -> None:
    first = post(gateway, "order-1", chat(text="hi", temperature=0.5))
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    # Same request with members in another order: the same canonical body.
    again = post(gateway, "order-1", {"temperature": 0.5, **chat(text="hi")})
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert jobs(sql) == 1
    # Without the key, or with another key, a new job each time.
    assert post(gateway, None, chat(text="hi", temperature=0.5)).json()["id"] != first.json()["id"]
    assert post(gateway, "order-2", chat(text="hi")).json()["id"] != first.json()["id"]
    assert jobs(sql) == 3
    done = gateway.wait_terminal(CHAT, first.json()["id"])
    # A replay after the job finished still answers the first envelope.
    late = post(gateway, "order-1", chat(text="hi", temperature=0.5))
    assert late.status_code == 202 and late.json() == first.json(), done


def test_same_key_with_another_request_is_422(gateway: Gateway, sql: Sql) -> None:
    assert post(gateway, "k", chat(text="one")).status_code == 202
    body = assert_error(post(gateway, "k", chat(text="two")), 422)
    assert body["error"]["type"] == "idempotency_error"
    assert body["error"]["param"] == "Idempotency-Key"
    # Another kind is another request, even with the same key.
    other_kind = post(gateway, "k", {"model": "fake/ok", "input": "one"}, path=EMBEDDINGS)
    assert_error(other_kind, 422)
    assert jobs(sql) == 1


def test_keys_do_not_collide_across_owners(gateway: Gateway, database_url: str, sql: Sql) -> None:
    alice, bob = create_key(database_url, "alice"), create_key(database_url, "bob")
    ids = {
        post(gateway, "same", chat(), headers=headers).json()["id"]
        for headers in ({}, {"x-bf-vk": alice}, {"x-bf-vk": bob})
    }
    assert len(ids) == 3
    # Each owner replays its own; a different body under another owner's key is no conflict.
    replay = post(gateway, "same", chat(), headers={"Authorization": f"Bearer {alice}"})
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json()["id"] in ids
    assert post(gateway, "only-bob", chat(text="x"), headers={"x-bf-vk": bob}).status_code == 202
    assert post(gateway, "only-bob", chat(text="y"), headers={"x-bf-vk": alice}).status_code == 202
    assert post(gateway, "only-bob", chat(text="z")).status_code == 202
    assert jobs(sql) == 6


def test_after_the_window_or_the_job_expired_a_key_is_new(gateway: Gateway, sql: Sql) -> None:
    first = post(gateway, "reuse", chat(text="a")).json()["id"]
    sql("UPDATE async_jobs SET created_at = now() - interval '86401 seconds' WHERE id = %s", first)
    second = post(gateway, "reuse", chat(text="b"))  # another body is fine now
    assert second.status_code == 202, second.text
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["id"] != first
    assert sql("SELECT idempotency_key, request_hash FROM async_jobs WHERE id = %s", first) == [
        (None, None)
    ]
    assert post(gateway, "reuse", chat(text="b")).json()["id"] == second.json()["id"]

    # An expired job (result TTL over, not swept yet) no longer holds its key either.
    done = gateway.wait_terminal(CHAT, second.json()["id"])
    assert done["status"] == "completed"
    sql("UPDATE async_jobs SET expires_at = now() WHERE id = %s", second.json()["id"])
    third = post(gateway, "reuse", chat(text="b"))
    assert "Idempotent-Replayed" not in third.headers
    assert third.json()["id"] not in (first, second.json()["id"])


def test_window_setting_is_used(gateway_factory: Callable[..., Gateway], sql: Sql) -> None:
    gateway = gateway_factory(jobs={"idempotency_window_seconds": 60})
    first = post(gateway, "w", chat()).json()["id"]
    sql("UPDATE async_jobs SET created_at = now() - interval '30 seconds'")
    assert post(gateway, "w", chat()).json()["id"] == first
    sql("UPDATE async_jobs SET created_at = now() - interval '61 seconds'")
    assert post(gateway, "w", chat()).json()["id"] != first


def test_fifty_concurrent_duplicates_make_one_job(gateway: Gateway, sql: Sql) -> None:
    barrier = threading.Barrier(50)
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def submit() -> None:
        with requests.Session() as session:
            barrier.wait()
            response = session.post(
                gateway.url + CHAT, json=chat(text="once"), headers={"Idempotency-Key": "burst"}
            )
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=submit) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.status_code for r in answers] == [202] * 50, [r.text for r in answers][:3]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 49
    assert jobs(sql) == 1


def new_job(key: str | None, digest: bytes, owner: int | None = None) -> NewJob:
    return NewJob(
        id=uuid.uuid4(),
        kind=Kind.CHAT_COMPLETION,
        owner_key_id=owner,
        provider="fake",
        model="fake/ok",
        request=chat(),
        ttl_seconds=60,
        idempotency_key=key,
        request_hash=digest if key is not None else None,
    )


def test_duplicates_within_one_batch_and_across_concurrent_batches(
    database_url: str, sql: Sql
) -> None:
    same, other = b"\x01" * 32, b"\x02" * 32
    batch = [new_job("dup", same), new_job(None, same), new_job("dup", same), new_job("dup", other)]

    answers = with_store(database_url, lambda store: store.insert_batch(batch))
    first, plain, replay, refused = answers
    assert isinstance(first, Committed) and not first.replayed and first.id == batch[0].id
    assert isinstance(plain, Committed) and plain.id == batch[1].id
    assert replay == Committed(first.id, first.created_at, replayed=True)
    assert isinstance(refused, IdempotencyKeyReused)
    assert jobs(sql) == 2

    # Twenty batches at once on separate connections, each racing for the same new key: the
    # losers wait for the winner's commit, then read its job.
    async def race(store: JobStore) -> list[Committed | IdempotencyKeyReused]:
        results = await asyncio.gather(
            *(store.insert_batch([new_job("race", same)]) for _ in range(20))
        )
        return [r for [r] in results]

    raced = with_store(database_url, race)
    assert all(isinstance(r, Committed) for r in raced)
    assert len({r.id for r in raced if isinstance(r, Committed)}) == 1
    assert sum(isinstance(r, Committed) and not r.replayed for r in raced) == 1
    assert sql("SELECT count(*) FROM async_jobs WHERE idempotency_key = 'race'") == [(1,)]


def test_multipart_submits_with_the_header(gateway: Gateway, sql: Sql) -> None:
    def transcribe(data: bytes, name: str = "a.wav") -> requests.Response:
        return post(
            gateway,
            "audio-1",
            path=TRANSCRIPTIONS,
            files={"file": (name, data, "audio/wav")},
            data={"model": "fake/ok", "language": "en"},
        )

    first = transcribe(AUDIO)
    assert first.status_code == 202, first.text
    again = transcribe(AUDIO)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert_error(transcribe(AUDIO[::-1]), 422)  # other contents
    assert_error(transcribe(AUDIO, "b.wav"), 422)  # other file name
    assert sql("SELECT count(*) FROM async_job_files") == [(1,)]
    assert jobs(sql) == 1


def test_key_length_is_bounded_by_the_spec(gateway: Gateway, sql: Sql) -> None:
    assert post(gateway, "k" * 255, chat()).status_code == 202
    assert_error(post(gateway, "k" * 256, chat()), 400)
    assert_error(post(gateway, "", chat()), 400)
    assert jobs(sql) == 1


def test_a_body_with_integers_wider_than_64_bits_replays_too(gateway: Gateway, sql: Sql) -> None:
    body = chat(text="big", x_vendor={"seed": 56879450941410164736})
    first = post(gateway, "wide-1", body)
    assert first.status_code == 202, first.text
    again = post(gateway, "wide-1", body)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = post(gateway, "wide-1", chat(text="big", x_vendor={"seed": 56879450941410164737}))
    assert other.status_code == 422
    assert jobs(sql) == 1
