"""Group commit: concurrent submissions share one transaction, each answered after its commit.

A batch refused for its data (e.g. a NUL character PostgreSQL cannot store in jsonb) is retried
job by job, so one bad request cannot sink its neighbours; an outage fails only the batch's own
submissions, which answer 503.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg

from asyncgate.config import DatabaseConfig
from asyncgate.models.batching import Batcher
from asyncgate.models.jobs import Committed, JobStore, NewJob


class UnstorableRequest(ValueError):
    """PostgreSQL refused a submission for its data; nothing of it was stored."""


def group_committer(
    store: JobStore,
    *,
    flushers: int = 3,
    max_batch: int = 256,
    max_batch_bytes: int = DatabaseConfig.group_commit_max_bytes,
    on_commit: Callable[[], None] | None = None,
) -> Batcher[NewJob, Committed]:
    """A batcher whose ``submit(job)`` returns the job's :class:`Committed` once it is committed
    (or raises :class:`models.jobs.IdempotencyKeyReused`).

    A batch holds at most ``max_batch`` jobs and, unless it is a single job, at most
    ``max_batch_bytes`` of request JSON: large bodies make small batches, so one statement's
    parameter, and the memory it takes on both sides, stays bounded. Each job's request is
    encoded when it is submitted, on its caller's turn, and that encoding is what is stored.

    ``on_commit`` runs after each committed batch: a worker in the same process uses it to
    wake at once instead of waiting for the NOTIFY round trip.
    """

    async def insert(jobs: list[NewJob]) -> Sequence[Committed | BaseException]:
        try:
            answers = await store.insert_batch(jobs)
        except psycopg.DataError as exc:
            if len(jobs) == 1:
                reason = exc.diag.message_primary or exc  # None when psycopg refused it itself
                return [UnstorableRequest(f"the request cannot be stored: {reason}")]
            return [result for job in jobs for result in await insert([job])]
        if on_commit is not None:
            on_commit()
        return answers

    return Batcher(
        insert,
        name="group-commit",
        flushers=flushers,
        max_batch=max_batch,
        cost=lambda job: len(job.encoded_request()),
        max_batch_cost=max_batch_bytes,
    )
