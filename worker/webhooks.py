"""Webhook delivery: claims due deliveries, sends each as a signed POST, records the outcome.

Any number of worker processes deliver at once; claims take a lease in the database (see
:mod:`asyncgate.models.webhooks`), so a delivery whose worker dies mid-attempt is simply due
again when the lease lapses. Delivery is at least once: a receiver dedupes on ``webhook-id``.

An attempt's outcome:

- 2xx: delivered.
- No answer, a timeout, 408, 429 (its ``Retry-After`` honoured) or 5xx: retried with
  exponential backoff and jitter until the retry window closes, then exhausted.
- A redirect (never followed) or any other 4xx, a refused address or scheme: failed for good.

Test events (``webhooks test``) are attempted once and never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from asyncgate.config import WebhooksConfig
from asyncgate.kinds import KINDS, Kind
from asyncgate.metrics import Metrics
from asyncgate.models.database import is_outage
from asyncgate.models.webhooks import ClaimedDelivery, WebhookStore
from asyncgate.status import JobStatus
from asyncgate.trace import TraceContext
from asyncgate.webhooks import (
    AttemptOutcome,
    Event,
    JobOutcome,
    RetrySchedule,
    SecretBox,
    SecretBoxError,
    event_body,
    job_data,
    message_id,
    signature_header,
)
from asyncgate.worker.addresses import BlockedAddress, GuardedResolver, check_host
from asyncgate.worker.upstream import retry_after_seconds

log = logging.getLogger("asyncgate.webhooks")

RETRIED_STATUSES = frozenset({408, 429})
USER_AGENT = "asyncgate-webhooks"
_LEASE_MARGIN_SECONDS = 30.0
_ANSWER_READ_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to."""

    outcome: AttemptOutcome
    status_code: int | None
    latency_ms: int
    error: str | None
    retry_in: float = 0.0


def payload(delivery: ClaimedDelivery, public_url: str | None) -> str:
    """The body of a delivery: the one fixed at its first attempt, or built now."""
    if delivery.payload is not None:
        return delivery.payload
    if delivery.event is Event.TEST:
        data = {"endpoint": delivery.endpoint_name}
        return orjson.dumps(event_body(delivery.event, delivery.created_at, data)).decode()
    assert delivery.job_id is not None and delivery.request_type is not None
    path = f"{KINDS[Kind(delivery.request_type)].path}/{delivery.job_id}"
    omitted = None
    if not delivery.job_found:
        omitted = "expired"
    elif delivery.job_result_binary:
        omitted = "binary"
    elif delivery.job_result_too_large:
        omitted = "too_large"
    outcome = JobOutcome(
        job_id=str(delivery.job_id),
        request_type=delivery.request_type,
        status=delivery.job_status or "",
        status_code=delivery.job_status_code,
        result_url=(public_url or "").rstrip("/") + path,
        result_expires_at=delivery.job_expires_at,
        response=delivery.job_result,
        response_omitted=omitted if delivery.job_status == JobStatus.COMPLETED else None,
        error=delivery.job_error,
        error_omitted=None if delivery.job_found else "expired",
    )
    return orjson.dumps(event_body(delivery.event, delivery.created_at, job_data(outcome))).decode()


class Sender:
    """Makes one attempt of a delivery: checks the URL, signs, POSTs, classifies the answer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        box: SecretBox,
        config: WebhooksConfig,
        resolver: AbstractResolver | None,
    ) -> None:
        self.session = session
        self.box = box
        self.config = config
        self.resolver = resolver
        self.schedule = RetrySchedule(
            config.retry_initial_seconds, config.retry_max_seconds, config.retry_for_seconds
        )

    async def attempt(self, delivery: ClaimedDelivery, body: str) -> Attempt:
        started = time.monotonic()
        try:
            status, retry_after = await self._post(delivery, body)
        except (BlockedAddress, SecretBoxError, _Refused) as exc:
            return Attempt(AttemptOutcome.FAILED, None, _ms(started), str(exc))
        except TimeoutError:
            error = f"no answer within {self.config.timeout_seconds:g}s"
            return self._retry(delivery, None, started, error)
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc.__cause__, BlockedAddress):
                return Attempt(AttemptOutcome.FAILED, None, _ms(started), str(exc.__cause__))
            error = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
            return self._retry(delivery, None, started, error)
        if 200 <= status < 300:
            return Attempt(AttemptOutcome.DELIVERED, status, _ms(started), None)
        if status in RETRIED_STATUSES or status >= 500:
            return self._retry(delivery, status, started, f"answered {status}", retry_after)
        reason = "redirects are not followed" if 300 <= status < 400 else "refused"
        return Attempt(AttemptOutcome.FAILED, status, _ms(started), f"answered {status}: {reason}")

    def _retry(
        self,
        delivery: ClaimedDelivery,
        status: int | None,
        started: float,
        error: str,
        retry_after: float | None = None,
    ) -> Attempt:
        latency = _ms(started)
        if delivery.event is Event.TEST:
            return Attempt(
                AttemptOutcome.FAILED, status, latency, error + " (tests are not retried)"
            )
        delay = self.schedule.delay(delivery.attempts, retry_after)
        age = (datetime.now(UTC) - delivery.first_attempt_at).total_seconds()
        if self.schedule.gives_up(age, delay):
            return Attempt(AttemptOutcome.EXHAUSTED, status, latency, error)
        return Attempt(AttemptOutcome.RETRY, status, latency, error, delay)

    async def _post(self, delivery: ClaimedDelivery, body: str) -> tuple[int, float | None]:
        url = urllib.parse.urlsplit(delivery.url)
        if url.scheme != "https" and not (url.scheme == "http" and self.config.allow_http):
            raise _Refused(f"{url.scheme}:// URLs are refused (webhooks.allow_http)")
        if self.resolver is not None:
            await check_host(url.hostname or "", self.resolver)
        secrets = [self.box.open(delivery.secret_sealed)]
        if delivery.previous_secret_sealed is not None:
            secrets.append(self.box.open(delivery.previous_secret_sealed))
        msg_id = message_id(delivery.id)
        timestamp = int(time.time())
        raw = body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets, msg_id, timestamp, raw),
        }
        trace = TraceContext.parse(delivery.traceparent, delivery.tracestate)
        if trace is not None:
            headers |= trace.child_headers()
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
        async with self.session.post(
            delivery.url, data=raw, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            await response.content.read(_ANSWER_READ_BYTES)
            return response.status, retry_after_seconds(response.headers.get("Retry-After"))


class _Refused(Exception):
    """The URL may not be delivered to under the current settings."""


def _ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


def client_session(config: WebhooksConfig) -> tuple[aiohttp.ClientSession, GuardedResolver | None]:
    """The HTTP session deliveries go out on; its resolver refuses blocked addresses unless
    private networks are allowed. Its own connection pool keeps slow receivers from taking the
    upstream providers' connections."""
    resolver = None if config.allow_private_networks else GuardedResolver()
    connector = aiohttp.TCPConnector(limit=0, resolver=resolver, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False), resolver


class Deliverer:
    """One process's delivery loop: ``start``, later ``stop``.

    Woken by the ``asyncgate_webhooks`` notification (a delivery was written or requeued) or
    every ``webhooks.poll_seconds`` for retries that fell due.
    """

    def __init__(
        self,
        store: WebhookStore,
        sender: Sender,
        config: WebhooksConfig,
        metrics: Metrics,
        *,
        owner: str,
        public_url: str | None,
        wake: asyncio.Event | None = None,
    ) -> None:
        """``wake`` is set when deliveries may be due; without it the loop polls only."""
        self.store = store
        self.sender = sender
        self.wake = wake or asyncio.Event()
        self.config = config
        self.metrics = metrics
        self.owner = owner
        self.public_url = public_url
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._more = False
        """The last claim found deliveries: more may be due once a slot or an endpoint's cap
        frees up, so each finished attempt looks again."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._deliver_forever(), name="webhook-deliveries")

    async def stop(self) -> None:
        """Stop claiming; attempts in flight get their timeout to finish, then are abandoned
        (their deliveries fall due again when the lease lapses)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=self.config.timeout_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def deliver_now(self, delivery_id: uuid.UUID) -> Attempt | None:
        """Claim the one delivery ``delivery_id`` and attempt it in this task (``webhooks
        test``); None if it was not due or is held elsewhere."""
        claimed = await self.store.claim(
            self.owner,
            1,
            per_endpoint=self.config.concurrency_per_endpoint,
            lease_seconds=self._lease_seconds,
            max_payload_bytes=self.config.max_payload_bytes,
            only=delivery_id,
        )
        if not claimed:
            return None
        return await self._attempt(claimed[0])

    @property
    def _lease_seconds(self) -> float:
        return self.config.timeout_seconds + _LEASE_MARGIN_SECONDS

    async def _deliver_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.config.poll_seconds)
            self.wake.clear()
            try:
                await self._claim_and_start()
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("claiming webhook deliveries failed")
                await asyncio.sleep(self.config.poll_seconds)

    async def _claim_and_start(self) -> None:
        free = self.config.concurrency - len(self._running)
        if free <= 0:
            return
        claimed = await self.store.claim(
            self.owner,
            free,
            per_endpoint=self.config.concurrency_per_endpoint,
            lease_seconds=self._lease_seconds,
            max_payload_bytes=self.config.max_payload_bytes,
        )
        for delivery in claimed:
            task = asyncio.create_task(self._attempt_logged(delivery), name="webhook-attempt")
            self._running.add(task)
            task.add_done_callback(self._finished)
        self._more = bool(claimed)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._more:
            self.wake.set()

    async def _attempt_logged(self, delivery: ClaimedDelivery) -> None:
        try:
            await self._attempt(delivery)
        except Exception as exc:
            if not is_outage(exc):
                log.exception("webhook delivery %s failed", message_id(delivery.id))

    async def _attempt(self, delivery: ClaimedDelivery) -> Attempt:
        if delivery.attempts == 1:
            delay = (datetime.now(UTC) - delivery.created_at).total_seconds()
            self.metrics.webhook_first_attempt_delay.observe(max(delay, 0.0))
        body = payload(delivery, self.public_url)
        attempted_at = datetime.now(UTC)
        attempt = await self.sender.attempt(delivery, body)
        self.metrics.webhook_attempts.labels(
            attempt.outcome.value, str(attempt.status_code or "none")
        ).inc()
        if attempt.status_code is not None:
            self.metrics.webhook_seconds.observe(attempt.latency_ms / 1000)
        recorded, disabled = await self.store.record(
            self.owner,
            delivery,
            outcome=attempt.outcome,
            attempted_at=attempted_at,
            latency_ms=attempt.latency_ms,
            status_code=attempt.status_code,
            error=attempt.error,
            payload=body,
            retry_in=attempt.retry_in,
            disable_after=self.config.disable_after_exhausted,
        )
        self._log(delivery, attempt, recorded)
        if disabled:
            log.warning(
                "webhook endpoint %r disabled: its deliveries were exhausted %d times in a row; "
                "enable it with `asyncgate webhooks enable %s`",
                delivery.endpoint_name,
                self.config.disable_after_exhausted,
                delivery.endpoint_name,
            )
        return attempt

    def _log(self, delivery: ClaimedDelivery, attempt: Attempt, recorded: bool) -> None:
        where = (
            f"webhook {message_id(delivery.id)} {delivery.event.value} "
            f"to {delivery.endpoint_name!r}"
        )
        if not recorded:
            log.warning("%s: lease lost during attempt %d; not recorded", where, delivery.attempts)
        elif attempt.outcome is AttemptOutcome.DELIVERED:
            log.info(
                "%s delivered (attempt %d, %d ms)", where, delivery.attempts, attempt.latency_ms
            )
        elif attempt.outcome is AttemptOutcome.RETRY:
            log.info(
                "%s attempt %d: %s; retry in %.0fs",
                where,
                delivery.attempts,
                attempt.error,
                attempt.retry_in,
            )
        else:
            log.warning(
                "%s %s after attempt %d: %s",
                where,
                attempt.outcome.value,
                delivery.attempts,
                attempt.error,
            )
