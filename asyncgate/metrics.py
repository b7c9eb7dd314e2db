"""Prometheus metrics: what the gateway counts, and the text it answers ``GET /metrics`` with.

One :class:`Metrics` per process is built by the composition root and handed to the HTTP
layer, the worker and the upstream client. Its metrics live in a registry of its own, not the
library's global one. When ``PROMETHEUS_MULTIPROC_DIR`` is set (``api --processes N`` sets it
for its children) prometheus-client keeps every process's values in files there and a scrape
of any process reports the sum over all of them, so N processes answer one consistent set.

Labels are bounded: operation ids from the spec (``unmatched`` for other paths), kinds,
configured provider names and status codes; never keys, paths with ids, or bodies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
QUEUE_CACHE_SECONDS = 2.0
"""A scrape reads the queue from the database at most this often per process."""

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_JOB_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """Jobs in the table by status, and the age of the oldest pending one (0 when none)."""

    by_status: Mapping[str, int]
    oldest_pending_seconds: float


class Metrics:
    """The gateway's counters and histograms, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "asyncgate_http_requests",
            "HTTP requests answered, by operation id and status code.",
            ("operation", "status"),
            registry=r,
        )
        self.http_seconds = Histogram(
            "asyncgate_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by operation id.",
            ("operation",),
            buckets=_LATENCY,
            registry=r,
        )
        self.jobs_submitted = Counter(
            "asyncgate_jobs_submitted",
            "Jobs accepted (idempotent replays not counted), by kind and provider.",
            ("kind", "provider"),
            registry=r,
        )
        self.jobs_finished = Counter(
            "asyncgate_jobs_finished",
            "Jobs a worker of this process brought to a terminal state, by kind, provider "
            "and status.",
            ("kind", "provider", "status"),
            registry=r,
        )
        self.pickup_seconds = Histogram(
            "asyncgate_job_pickup_delay_seconds",
            "Time from a job's submission to a worker claiming it, by kind.",
            ("kind",),
            buckets=_JOB_SECONDS,
            registry=r,
        )
        self.run_seconds = Histogram(
            "asyncgate_job_run_seconds",
            "Time from a worker claiming a job to its terminal write, by kind.",
            ("kind",),
            buckets=_JOB_SECONDS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "asyncgate_upstream_requests",
            "Requests sent to providers, by provider and status code (the gateway's own 502 or "
            "504 when no answer came; error when the request was abandoned, e.g. cancelled).",
            ("provider", "status"),
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "asyncgate_upstream_request_duration_seconds",
            "Time a provider took to answer, by provider.",
            ("provider",),
            buckets=_LATENCY,
            registry=r,
        )
        self.upstream_retries = Counter(
            "asyncgate_upstream_retries",
            "Transient upstream failures retried, by provider.",
            ("provider",),
            registry=r,
        )
        self.webhook_attempts = Counter(
            "asyncgate_webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, retry, failed, exhausted) and "
            "status code (none when no answer came).",
            ("outcome", "status"),
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "asyncgate_webhook_attempt_duration_seconds",
            "Time a webhook receiver took to answer an attempt.",
            buckets=_LATENCY,
            registry=r,
        )
        self.webhook_first_attempt_delay = Histogram(
            "asyncgate_webhook_first_attempt_delay_seconds",
            "Time from a job's terminal write to the first attempt of its webhook delivery.",
            buckets=_LATENCY,
            registry=r,
        )
        self._queue: QueueSnapshot | None = None
        self._queue_read_at = float("-inf")

    def serve(self, host: str, port: int) -> None:
        """Serve this process's metrics (no queue gauges) over HTTP from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)

    async def exposition(self, read_queue: Callable[[], Awaitable[QueueSnapshot]]) -> bytes:
        """The Prometheus text of every process's metrics plus the queue, read with
        ``read_queue`` unless this process read it in the last couple of seconds."""
        now = time.monotonic()
        if now - self._queue_read_at >= QUEUE_CACHE_SECONDS:
            self._queue = await read_queue()
            self._queue_read_at = now
        registry = self.registry
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        registry_with_queue = CollectorRegistry()
        registry_with_queue.register(_Merged(registry, self._queue))
        return generate_latest(registry_with_queue)


class _Merged:
    """One collector: a registry's metrics followed by the queue gauges of a snapshot."""

    def __init__(self, registry: CollectorRegistry, queue: QueueSnapshot | None) -> None:
        self.registry, self.queue = registry, queue

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        if self.queue is None:
            return
        jobs = GaugeMetricFamily(
            "asyncgate_queue_jobs", "Jobs in the job table, by status.", labels=("status",)
        )
        for status, count in sorted(self.queue.by_status.items()):
            jobs.add_metric((status,), count)
        yield jobs
        yield GaugeMetricFamily(
            "asyncgate_queue_oldest_pending_seconds",
            "Age of the oldest pending job; 0 when none is pending.",
            value=self.queue.oldest_pending_seconds,
        )
