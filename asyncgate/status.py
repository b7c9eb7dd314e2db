"""What a job can be: the one list of job states, used by the tables, the store, the worker
and the renderer alike."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """A job's state; its value is stored in ``async_jobs.status`` and shown to clients.

    ``pending`` -> ``processing`` -> ``completed`` | ``failed``; a ``processing`` job whose
    worker stops may return to ``pending``; a ``pending`` or ``processing`` job its client
    cancels becomes ``cancelled``. Terminal states never change again.
    """

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
)
"""States a job never leaves; polls answer them with 200 and their outcome."""
