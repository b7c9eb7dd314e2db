"""The guarded statements around lapsed leases, against a real PostgreSQL: a requeued job keeps
its last owner, who may renew it or write its result until another worker claims it; nobody
else's result is ever overwritten; exhausted jobs get a grace period before they fail."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from asyncgate.models.database import Database
from asyncgate.models.jobs import JobStore, Outcome
from asyncgate.worker.loop import EXHAUSTED_ERROR, STALE_ERROR
from tests.helpers import insert_job, with_store

Sql = Callable[..., list[tuple[Any, ...]]]


def result(job_id: str, text: str) -> Outcome:
    return Outcome(uuid.UUID(job_id), "completed", 200, result={"answer": text})


def row(sql: Sql, job_id: str) -> tuple[Any, ...]:
    [found] = sql(
        "SELECT status, lease_owner, lease_expires_at IS NOT NULL, attempts, result "
        "FROM async_jobs WHERE id = %s",
        job_id,
    )
    return found


def lapsed(database_url: str, owner: str, *, attempts: int = 1, ago: float = 5.0) -> str:
    return insert_job(
        database_url,
        status="processing",
        attempts=attempts,
        lease_owner=owner,
        lease_expires_in=-ago,
    )


def test_requeued_job_keeps_its_owner_who_may_still_write_its_result(
    database_url: str, sql: Sql
) -> None:
    job_id = lapsed(database_url, "worker-a")

    async def scenario(store: JobStore) -> set[uuid.UUID]:
        requeued, _ = await store.requeue_expired(3, EXHAUSTED_ERROR)
        assert [str(t.id) for t in requeued] == [job_id]
        assert row(sql, job_id) == ("pending", "worker-a", False, 1, None)
        return await store.finish("worker-a", [result(job_id, "from a")])

    assert with_store(database_url, scenario) == {uuid.UUID(job_id)}
    assert row(sql, job_id) == ("completed", None, False, 1, {"answer": "from a"})


def test_once_another_worker_claims_the_job_the_old_owner_cannot_write(
    database_url: str, sql: Sql
) -> None:
    job_id = lapsed(database_url, "worker-a")

    async def scenario(store: JobStore) -> tuple[set[uuid.UUID], set[uuid.UUID], set[uuid.UUID]]:
        await store.requeue_expired(3, EXHAUSTED_ERROR)
        [claimed] = await store.claim("worker-b", 10, 30.0)
        assert str(claimed.id) == job_id
        late_renewal = await store.renew("worker-a", [claimed.id], 30.0)
        late = await store.finish("worker-a", [result(job_id, "from a")])
        return late_renewal, late, await store.finish("worker-b", [result(job_id, "from b")])

    late_renewal, late, written = with_store(database_url, scenario)
    assert late_renewal == set()
    assert late == set()
    assert written == {uuid.UUID(job_id)}
    assert row(sql, job_id) == ("completed", None, False, 2, {"answer": "from b"})


def test_a_late_renewal_takes_back_a_requeued_job_nobody_claimed(
    database_url: str, sql: Sql
) -> None:
    job_id = lapsed(database_url, "worker-a")

    async def scenario(store: JobStore) -> set[uuid.UUID]:
        await store.requeue_expired(3, EXHAUSTED_ERROR)
        return await store.renew("worker-a", [uuid.UUID(job_id)], 30.0)

    assert with_store(database_url, scenario) == {uuid.UUID(job_id)}
    # Back in its owner's hands, with no attempt counted for it.
    assert row(sql, job_id) == ("processing", "worker-a", True, 1, None)


def test_exhausted_job_fails_only_after_a_grace_period(database_url: str, sql: Sql) -> None:
    recent = lapsed(database_url, "worker-a", attempts=3, ago=2.0)
    old = lapsed(database_url, "worker-b", attempts=3, ago=40.0)

    async def scenario(store: JobStore) -> list[str]:
        _, failed = await store.requeue_expired(3, EXHAUSTED_ERROR, grace_seconds=30.0)
        return [str(t.id) for t in failed]

    assert with_store(database_url, scenario) == [old]
    assert row(sql, recent) == ("processing", "worker-a", True, 3, None)
    assert row(sql, old)[:2] == ("failed", None)


def test_a_requeued_job_that_waited_too_long_fails_without_an_owner(
    database_url: str, sql: Sql
) -> None:
    job_id = lapsed(database_url, "worker-a")
    sql("UPDATE async_jobs SET created_at = now() - interval '2 hours' WHERE id = %s", job_id)

    async def scenario(store: JobStore) -> list[str]:
        await store.requeue_expired(3, EXHAUSTED_ERROR)
        return [str(t.id) for t in await store.fail_stale_pending(600.0, STALE_ERROR)]

    assert with_store(database_url, scenario) == [job_id]
    assert row(sql, job_id)[:2] == ("failed", None)


def test_a_claim_of_a_job_its_owner_still_runs_is_not_counted(database_url: str, sql: Sql) -> None:
    job_id = lapsed(database_url, "worker-a")

    async def scenario(store: JobStore) -> None:
        await store.requeue_expired(3, EXHAUSTED_ERROR)
        [claimed] = await store.claim("worker-a", 10, 30.0)
        assert claimed.attempts == 2
        await store.uncount_claims("worker-a", [claimed.id])
        await store.uncount_claims("worker-b", [claimed.id])  # not b's: nothing changes

    with_store(database_url, scenario)
    assert row(sql, job_id) == ("processing", "worker-a", True, 1, None)


def test_a_worker_database_plans_each_statement_once(database_url: str) -> None:
    """A worker's pool uses generic plans, a pooled one cannot keep any, the API's keeps
    PostgreSQL's choice; the claim runs the same under a generic plan."""

    async def plan_modes() -> dict[str, str]:
        modes = {}
        for name, db in {
            "worker": Database(database_url, pool_size=1, generic_plans=True),
            "pooled worker": Database(
                database_url, listen_url=database_url, pool_size=1, generic_plans=True
            ),
            "api": Database(database_url, pool_size=1),
        }.items():
            await db.open()
            try:
                async with db.connection() as conn:
                    cur = await conn.execute("SHOW plan_cache_mode")
                    row = await cur.fetchone()
                    assert row is not None
                    modes[name] = row[0]
                if name == "worker":
                    # More executions than psycopg waits before it prepares a statement,
                    # then the prepared claim takes the jobs, oldest first.
                    store = JobStore(db)
                    for _ in range(6):
                        assert await store.claim("w", 1, 30.0) == []
                    jobs = [insert_job(database_url), insert_job(database_url)]
                    claimed = [await store.claim("w", 1, 30.0) for _ in range(3)]
                    assert [[str(j.id) for j in c] for c in claimed] == [[jobs[0]], [jobs[1]], []]
            finally:
                await db.close()
        return modes

    assert asyncio.run(plan_modes()) == {
        "worker": "force_generic_plan",
        "pooled worker": "auto",
        "api": "auto",
    }
