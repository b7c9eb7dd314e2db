"""The batcher's bounds (items and cost) and the group committer's byte bound on a real store."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from asyncgate.kinds import Kind
from asyncgate.models.batching import Batcher
from asyncgate.models.committer import group_committer
from asyncgate.models.database import Database
from asyncgate.models.jobs import Committed, JobStore, NewJob

BOUND = 100


async def gated_batches(
    costs: list[int], *, max_batch: int = 256, fail: set[int] | None = None
) -> tuple[list[list[int]], list[Any]]:
    """Submit items 0..n-1 with ``costs`` while the first flush is held, so the rest queue up;
    returns the batches flushed (item numbers) and each caller's answer, in submission order."""
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def flush(items: list[int]) -> Sequence[str | BaseException]:
        batches.append(items)
        await release.wait()
        return [ValueError(i) if i in (fail or set()) else f"done {i}" for i in items]

    batcher: Batcher[int, str] = Batcher(
        flush,
        name="test",
        flushers=1,
        max_batch=max_batch,
        cost=lambda i: costs[i],
        max_batch_cost=BOUND,
    )
    batcher.start()
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(len(costs))]
    while not batches:
        await asyncio.sleep(0)
    release.set()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    await batcher.stop()
    return batches, answers


def test_no_batch_exceeds_the_cost_bound_unless_it_is_one_item() -> None:
    costs = [10, 60, 30, 20, 250, 5, 95, 6, 40, 40, 40, 101, 1, 1]
    batches, answers = asyncio.run(gated_batches(costs))
    assert answers == [f"done {i}" for i in range(len(costs))]
    assert [i for batch in batches for i in batch] == list(range(len(costs)))
    for batch in batches:
        assert len(batch) == 1 or sum(costs[i] for i in batch) <= BOUND
    assert [4] in batches and [11] in batches  # each over the bound on its own
    # Batches are as full as the order allows: the next item would have overflowed each one.
    for batch, following in itertools.pairwise(batches):
        assert sum(costs[i] for i in batch) + costs[following[0]] > BOUND or len(batch) == 256


def test_the_count_bound_still_applies_and_failures_reach_their_own_callers() -> None:
    costs = [1] * 10
    batches, answers = asyncio.run(gated_batches(costs, max_batch=4, fail={5}))
    assert all(len(b) <= 4 for b in batches) and sum(map(len, batches)) == 10
    assert isinstance(answers[5], ValueError)
    assert [a for i, a in enumerate(answers) if i != 5] == [
        f"done {i}" for i in range(10) if i != 5
    ]


class RecordingStore(JobStore):
    """A real store that remembers the size of each batch it was given."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.batches: list[list[NewJob]] = []

    async def insert_batch(self, jobs: Sequence[NewJob]) -> list[Any]:
        self.batches.append(list(jobs))
        return await super().insert_batch(jobs)


def big_job(text_bytes: int, extra: dict[str, Any] | None = None) -> NewJob:
    content = "é" * (text_bytes // 2)  # two bytes each in UTF-8
    request = {"model": "fake/ok", "messages": [{"role": "user", "content": content}]}
    return NewJob(
        id=uuid.uuid4(),
        kind=Kind.CHAT_COMPLETION,
        owner_key_id=None,
        provider="fake",
        model="fake/ok",
        request={**request, **(extra or {})},
        ttl_seconds=60,
    )


def test_group_commit_batches_by_request_bytes_and_stores_each_request(database_url: str) -> None:
    sizes = [300_000, 300_000, 900_000, 50_000, 2_000_000, 10_000, 10_000, 600_000]
    jobs = [big_job(size) for size in sizes]
    jobs.append(big_job(100, {"seed": 2**70, "idempotent": True}))  # wider than orjson's ints
    jobs[-1].idempotency_key, jobs[-1].request_hash = "big-int", b"\x01" * 32
    limit = 1_000_000

    async def main() -> tuple[RecordingStore, list[Committed]]:
        db = Database(database_url, pool_size=2)
        await db.open()
        try:
            store = RecordingStore(db)
            committer = group_committer(store, flushers=1, max_batch_bytes=limit)
            committer.start()
            try:
                answers = await asyncio.gather(*(committer.submit(job) for job in jobs))
            finally:
                await committer.stop()
            return store, answers
        finally:
            await db.close()

    store, answers = asyncio.run(main())
    assert [a.id for a in answers] == [j.id for j in jobs]
    assert sorted(j.id for batch in store.batches for j in batch) == sorted(j.id for j in jobs)
    assert len(store.batches) > 1
    for batch in store.batches:
        size = sum(len(j.encoded_request()) for j in batch)
        assert len(batch) == 1 or size <= limit
    with psycopg.connect(database_url) as conn:
        stored = dict(
            conn.execute(
                "SELECT id, request FROM async_jobs WHERE id = ANY(%s)", ([j.id for j in jobs],)
            ).fetchall()
        )
    assert all(stored[j.id] == j.request for j in jobs)


@pytest.mark.parametrize("value", ["plain", {"nested": [1, 2.5, None, True, "ü\\\"'"]}])
def test_encoded_request_is_the_json_of_the_request(value: object) -> None:
    job = big_job(10, {"extra": value})
    first = job.encoded_request()
    assert job.encoded_request() is first
    assert json.loads(first) == job.request
