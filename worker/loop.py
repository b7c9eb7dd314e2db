"""The worker: claims jobs under a lease, keeps the lease alive, runs them, writes the result.

Scale-out needs nothing in-process: any number of workers on any number of machines claim
with ``FOR UPDATE SKIP LOCKED``; a worker that dies stops renewing and its jobs are claimed
again once their lease lapses; a worker that lost a lease cannot write over the new owner.

A database outage longer than the lease is not taken for a crash: when the database returns,
every worker renews its leases at once, and no worker reaps lapsed leases until a lease period
after its own database access came back, so live owners renew first. An owner whose job was
requeued anyway may still renew it or write its result until another worker claims it.

Stopping (SIGTERM): claiming stops at once, running jobs get ``shutdown_grace_seconds`` to
finish, and whatever is still running is handed back to ``pending`` without using an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from asyncgate.config import WorkerConfig
from asyncgate.errors import error_body
from asyncgate.metrics import Metrics
from asyncgate.models.batching import Batcher
from asyncgate.models.database import is_outage
from asyncgate.models.jobs import ClaimedJob, JobStore, Outcome, Transition
from asyncgate.models.notifications import JobNotifications
from asyncgate.trace import log_fields
from asyncgate.worker.execute import Executor

log = logging.getLogger("asyncgate.worker")

EXHAUSTED_ERROR = error_body(
    502,
    "the job's worker stopped before finishing, and it has used all its attempts",
    error_type="attempts_exhausted",
)
DEADLINE_ERROR = error_body(
    504,
    "the job's deadline (x-bf-async-timeout) passed before it finished",
    error_type="job_deadline_exceeded",
)
STALE_ERROR = error_body(
    504,
    "the job waited too long for a worker and was not run",
    error_type="pending_deadline_exceeded",
)


CLAIM_SINCE_MARGIN_SECONDS = 2.0
"""How far before the newest job it claimed a worker's next claims start looking. A job is
created at the start of its submit's transaction and seen at its commit: one committing later
than this (or requeued with its old creation time) is found by the next full claim."""


def worker_id() -> str:
    """A lease owner name unique across hosts, processes and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Running:
    job: ClaimedJob
    task: asyncio.Task[None]
    started: float = field(default_factory=time.monotonic)
    finishing: bool = False
    """The upstream work is done and the (guarded) terminal write is under way: never cancel."""


class Worker:
    """One process's claim loop, lease heartbeat and reaper: ``start``, later ``stop``."""

    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        notifications: JobNotifications,
        config: WorkerConfig,
        metrics: Metrics,
        *,
        owner: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.executor = executor
        self.notifications = notifications
        self.config = config
        self.owner = owner or worker_id()
        self.running: dict[uuid.UUID, _Running] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._finisher: Batcher[Outcome, bool] = Batcher(self._write_outcomes, name="finish")
        self._renew_now = asyncio.Event()
        self._claim_since: datetime | None = None
        """Lower bound of the claims between full ones (see :meth:`_claim_forever`)."""
        self._full_claim_at = float("-inf")
        self.breaker = store.db.breaker
        self.breaker.on_close(self._renew_now.set)
        notifications.on_done = self._ended_elsewhere

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._finisher.start()
        self._tasks = [
            asyncio.create_task(self._claim_forever(), name="worker-claim"),
            asyncio.create_task(self._renew_forever(), name="worker-renew"),
            asyncio.create_task(self._reap_forever(), name="worker-reap"),
        ]
        log.info("worker %s started (concurrency %d)", self.owner, self.config.concurrency)

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish within the grace period, hand back the rest."""
        self._stopping.set()
        self.notifications.event.set()
        claim_task = self._tasks[0] if self._tasks else None
        if claim_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await claim_task
        tasks = [r.task for r in self.running.values()]
        if tasks:
            log.info("worker %s waiting for %d running job(s)", self.owner, len(tasks))
            await asyncio.wait(tasks, timeout=self.config.shutdown_grace_seconds)
        leftovers = dict(self.running)
        for running in leftovers.values():
            running.task.cancel()
        await asyncio.gather(*(r.task for r in leftovers.values()), return_exceptions=True)
        if leftovers:
            await self._release(list(leftovers))
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        await self._finisher.stop()
        log.info("worker %s stopped", self.owner)

    async def _release(self, ids: list[uuid.UUID]) -> None:
        try:
            released = await self.store.release(self.owner, ids)
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("could not hand back %d job(s); their leases will lapse", len(ids))
            return
        for job_id in released:
            log.info("job %s handed back to pending", job_id)

    # --- claiming -------------------------------------------------------------------------

    async def _claim_forever(self) -> None:
        config = self.config
        while not self._stopping.is_set():
            free = config.concurrency - len(self.running)
            wanted = min(free, config.claim_batch)
            jobs: list[ClaimedJob] = []
            if wanted > 0:
                # A full claim (no lower bound) once per poll interval; in between, claims
                # start near the jobs last claimed and skip what the queue index still holds
                # of the jobs claimed before.
                full = time.monotonic() - self._full_claim_at >= config.poll_seconds
                try:
                    jobs = await self.store.claim(
                        self.owner,
                        wanted,
                        config.lease_seconds,
                        config.max_pending_seconds,
                        since=None if full else self._claim_since,
                    )
                except Exception as exc:
                    if not is_outage(exc):
                        log.exception("claim failed")
                    await asyncio.sleep(config.poll_seconds)
                    continue
                if full:
                    self._full_claim_at = time.monotonic()
                self._advance_claim_since(jobs)
                again = [job.id for job in jobs if job.id in self.running]
                for job in jobs:
                    if job.id not in self.running:
                        self._start(job)
                if again:
                    await self._uncount(again)
            if wanted > 0 and len(jobs) == wanted:
                continue
            await self.notifications.wait(config.poll_seconds)

    def _advance_claim_since(self, jobs: list[ClaimedJob]) -> None:
        if not jobs:
            return
        bound = max(job.created_at for job in jobs) - timedelta(seconds=CLAIM_SINCE_MARGIN_SECONDS)
        if self._claim_since is None or bound > self._claim_since:
            self._claim_since = bound

    async def _uncount(self, ids: list[uuid.UUID]) -> None:
        for job_id in ids:
            log.info("job %s claimed again while still running here; the execution goes on", job_id)
        try:
            await self.store.uncount_claims(self.owner, ids)
        except Exception as exc:
            if not is_outage(exc):
                raise

    def _start(self, job: ClaimedJob) -> None:
        waited = (datetime.now(UTC) - job.created_at).total_seconds()
        self.metrics.pickup_seconds.labels(job.kind.value).observe(max(waited, 0.0))
        trace, extra = log_fields(job.trace)
        log.info(
            "job %s kind=%s provider=%s processing attempt=%d%s",
            job.id,
            job.kind.value,
            job.provider,
            job.attempts,
            trace,
            extra=extra,
        )
        task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
        self.running[job.id] = _Running(job, task)

    async def _execute(self, job: ClaimedJob) -> None:
        try:
            outcome = await self.executor.run(job)
            if (running := self.running.get(job.id)) is not None:
                running.finishing = True
            await self._finish(job, outcome)
        except Exception as exc:
            # The job stays ours until its lease lapses; then it is claimed and run again.
            if is_outage(exc):
                log.warning("job %s interrupted: database unavailable; it will run again", job.id)
            else:
                log.exception(
                    "job %s interrupted by an unexpected error; it will run again", job.id
                )
        finally:
            self.running.pop(job.id, None)
            self.notifications.event.set()  # a slot is free

    async def _finish(self, job: ClaimedJob, outcome: Outcome) -> None:
        """Write the terminal state, retrying through a database outage while the lease may hold."""
        started = self.running[job.id].started if job.id in self.running else time.monotonic()
        delay = 0.1
        kept = False
        while True:
            try:
                written = await self._finisher.submit(outcome)
                break
            except Exception as exc:
                if not is_outage(exc):
                    raise
                if not kept:
                    log.warning("job %s result kept in memory; database unavailable", job.id)
                    kept = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        duration_ms = (time.monotonic() - started) * 1000
        if written:
            self.metrics.jobs_finished.labels(
                job.kind.value, job.provider, outcome.status.value
            ).inc()
            self.metrics.run_seconds.labels(job.kind.value).observe(duration_ms / 1000)
            trace, extra = log_fields(job.trace)
            log.info(
                "job %s kind=%s provider=%s %s status=%d duration_ms=%.0f%s",
                job.id,
                job.kind.value,
                job.provider,
                outcome.status,
                outcome.status_code,
                duration_ms,
                trace,
                extra=extra,
            )
        else:
            log.warning("job %s lease lost before its result was written; result dropped", job.id)

    async def _write_outcomes(self, outcomes: list[Outcome]) -> list[bool]:
        """One guarded statement for a batch of terminal writes; False where the lease was lost."""
        written = await self.store.finish(self.owner, outcomes)
        return [outcome.id in written for outcome in outcomes]

    def _ended_elsewhere(self, job_id: uuid.UUID) -> None:
        """A job became terminal: if this worker is still running it, the job was cancelled
        (or finished by another worker), so the execution and its upstream request stop now."""
        running = self.running.get(job_id)
        if running is None or running.finishing or running.task.done():
            return
        log.info("job %s ended elsewhere (cancelled or finished); upstream request aborted", job_id)
        running.task.cancel()

    # --- leases ---------------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        while True:
            # On reconnection renew at once: leases may have lapsed during the outage.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), self.config.renew_seconds)
            self._renew_now.clear()
            ids = list(self.running)
            if not ids:
                continue
            try:
                held = await self.store.renew(self.owner, ids, self.config.lease_seconds)
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("lease renewal failed")
                continue
            for job_id in set(ids) - held:
                running = self.running.get(job_id)
                if running is not None and not running.task.done() and not running.finishing:
                    log.warning("job %s lease lost; abandoning this execution", job_id)
                    running.task.cancel()

    async def _reap_forever(self) -> None:
        interval = max(0.2, min(self.config.lease_seconds / 2, self.config.poll_seconds * 5))
        while True:
            if self.breaker.is_open:
                await asyncio.sleep(interval)
                continue
            requeued: list[Transition] = []
            failed: list[Transition] = []
            try:
                if not self._holding_off():
                    requeued, failed = await self.store.requeue_expired(
                        self.config.max_attempts,
                        EXHAUSTED_ERROR,
                        grace_seconds=self.config.lease_seconds,
                    )
                stale = await self.store.fail_stale_pending(
                    self.config.max_pending_seconds, STALE_ERROR
                )
                late = await self.store.fail_past_deadline(DEADLINE_ERROR)
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("lease reaper failed")
            else:
                _log_transitions(requeued, "lease expired; back to pending")
                _log_transitions(failed, "failed: attempts exhausted")
                _log_transitions(stale, "failed: waited too long in pending")
                _log_transitions(late, "failed: its deadline passed")
            await asyncio.sleep(interval)

    def _holding_off(self) -> bool:
        """Whether lapsed leases must be left alone for now: while the database is away, and
        for a lease period after this process's access came back (or it started), so that live
        owners cut off by the same outage renew before anyone takes their jobs."""
        if self.breaker.is_open:
            return True
        return time.monotonic() - self.breaker.recovered_at < self.config.lease_seconds


def _log_transitions(transitions: list[Transition], what: str) -> None:
    for t in transitions:
        log.info(
            "job %s kind=%s provider=%s %s (attempts=%d)",
            t.id,
            t.kind,
            t.provider,
            what,
            t.attempts,
        )
