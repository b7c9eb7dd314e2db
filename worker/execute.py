"""Running one claimed job: retries with backoff, then fallbacks, all within a deadline.

A provider of type local runs the job in its own process pool instead of over HTTP; its
answers and failures take the same shapes, so all that follows holds for it alike.

The order is: the requested model, tried up to ``retry_tries`` times while failures are
transient; then each fallback the same way; then the job fails with the last upstream error.
Permanent failures (400, 401, 403, 404, 422, unusable answers) skip straight to the next model.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from asyncgate.config import ProviderConfig, WorkerConfig
from asyncgate.errors import error_body, extra_fields
from asyncgate.kinds import KINDS
from asyncgate.metrics import Metrics
from asyncgate.models.jobs import ClaimedJob, JobStore, NewFile, Outcome
from asyncgate.routing import candidate_models, split_model
from asyncgate.status import JobStatus
from asyncgate.worker.local import LocalPool
from asyncgate.worker.upstream import Upstream, UpstreamError, UpstreamReply, upstream_body

log = logging.getLogger("asyncgate.worker")


def backoff_delay(try_number: int, config: WorkerConfig, retry_after: float | None) -> float:
    """Seconds to wait before try ``try_number + 1``: the upstream's Retry-After when it gave one,
    else exponential backoff with full jitter; never more than ``retry_max_seconds``."""
    if retry_after is not None:
        return min(retry_after, config.retry_max_seconds)
    ceiling = min(config.retry_max_seconds, config.retry_base_seconds * 2**try_number)
    return random.uniform(ceiling / 2, ceiling)


def failure_outcome(job: ClaimedJob, exc: UpstreamError, model: str) -> Outcome:
    """The failed-job record of an upstream error, in the BifrostError shape."""
    provider = split_model(model)
    error = error_body(
        exc.status_code,
        exc.message,
        error_type=exc.error_type,
        code=exc.code,
        param=exc.param,
        from_upstream=exc.from_upstream,
        extra=extra_fields(provider[0] if provider else job.provider, job.model, job.kind.value),
    )
    return Outcome(job.id, JobStatus.FAILED, exc.status_code, error=error)


def success_outcome(job: ClaimedJob, reply: UpstreamReply) -> Outcome:
    if reply.body is not None:
        return Outcome(
            job.id,
            JobStatus.COMPLETED,
            reply.status_code,
            result_bytes=reply.body,
            result_content_type=reply.content_type,
        )
    return Outcome(job.id, JobStatus.COMPLETED, reply.status_code, result=reply.result)


class Executor:
    """Turns a claimed job into an :class:`Outcome`; never raises for upstream trouble."""

    def __init__(
        self,
        upstream: Upstream,
        store: JobStore,
        providers: Mapping[str, ProviderConfig],
        config: WorkerConfig,
        metrics: Metrics,
        local: Mapping[str, LocalPool] | None = None,
    ) -> None:
        """``local`` holds the process pool of each provider of type local, by name."""
        self.upstream = upstream
        self.local = dict(local or {})
        self.metrics = metrics
        self.store = store
        self.providers = providers
        self.config = config
        # One cap per provider for the whole process, so a slow provider cannot take every slot.
        self.caps = {name: asyncio.Semaphore(p.max_concurrency) for name, p in providers.items()}

    async def run(self, job: ClaimedJob) -> Outcome:
        """The outcome of one execution, within ``max_job_seconds`` and the job's own deadline
        (``x-bf-async-timeout``), whichever ends first."""
        budget = self.config.max_job_seconds
        message = f"job exceeded its maximum run time of {budget:g}s"
        if job.deadline_at is not None:
            left = (job.deadline_at - datetime.now(UTC)).total_seconds()
            if left < budget:
                budget = max(left, 0.0)
                message = "the job's deadline (x-bf-async-timeout) passed before it finished"
        try:
            async with asyncio.timeout(budget):
                return await self._run(job)
        except TimeoutError:
            timeout = UpstreamError(message, status_code=504, error_type="job_deadline_exceeded")
            return failure_outcome(job, timeout, job.model)

    async def _run(self, job: ClaimedJob) -> Outcome:
        files = await self.store.files(job.id) if KINDS[job.kind].multipart else []
        last: UpstreamError | None = None
        last_model = job.model
        for model in candidate_models(job.request):
            parsed = split_model(model)
            provider = self.providers.get(parsed[0]) if parsed else None
            if parsed is None or provider is None:
                last = UpstreamError(
                    f"model {model!r} names no configured provider",
                    status_code=502,
                    error_type="provider_not_configured",
                )
                continue
            last_model = model
            body = upstream_body(job.request, parsed[1])
            try:
                reply = await self._try(job, provider, body, files)
                return success_outcome(job, reply)
            except UpstreamError as exc:
                last = exc
                log.info(
                    "job %s kind=%s provider=%s model=%s upstream failed: %s (%s)",
                    job.id,
                    job.kind.value,
                    provider.name,
                    parsed[1],
                    exc.status_code,
                    exc.message,
                )
        assert last is not None
        return failure_outcome(job, last, last_model)

    async def _try(
        self,
        job: ClaimedJob,
        provider: ProviderConfig,
        body: dict[str, Any],
        files: list[NewFile],
    ) -> UpstreamReply:
        for try_number in range(self.config.retry_tries):
            try:
                async with self.caps[provider.name]:
                    return await self._send(job, provider, body, files)
            except UpstreamError as exc:
                if not exc.transient or try_number + 1 == self.config.retry_tries:
                    raise
                self.metrics.upstream_retries.labels(provider.name).inc()
                await asyncio.sleep(backoff_delay(try_number, self.config, exc.retry_after))
        raise AssertionError("unreachable: the last try raises")

    async def _send(
        self,
        job: ClaimedJob,
        provider: ProviderConfig,
        body: dict[str, Any],
        files: list[NewFile],
    ) -> UpstreamReply:
        """One upstream request, counted by its answer: a status code, or what stopped it."""
        started = time.monotonic()
        answer = "error"
        try:
            if provider.local:
                reply = await self.local[provider.name].send(
                    job.kind, body, files, timeout=provider.timeout
                )
            else:
                reply = await self.upstream.send(
                    provider, job.kind, body, files, job.id, trace=job.trace
                )
            answer = str(reply.status_code)
            return reply
        except UpstreamError as exc:
            answer = str(exc.status_code)
            raise
        finally:
            self.metrics.upstream_requests.labels(provider.name, answer).inc()
            self.metrics.upstream_seconds.labels(provider.name).observe(time.monotonic() - started)
