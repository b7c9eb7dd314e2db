"""What a webhook is: its events, a delivery's states, the Standard Webhooks signature, the
sealing of signing secrets, the retry schedule and the body of an event.

Nothing here touches the network or the database; the store (:mod:`asyncgate.models.webhooks`)
keeps endpoints and deliveries, the worker (:mod:`asyncgate.worker.webhooks`) sends them.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import random
import re
import secrets
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from asyncgate.status import JobStatus

SECRET_PREFIX = "whsec_"
MESSAGE_PREFIX = "msg_"
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What an endpoint may be called: it is named in a header and on the command line."""


class Event(enum.StrEnum):
    """What a delivery announces; a job's event is named after the terminal state it reached."""

    COMPLETED = "async_job.completed"
    FAILED = "async_job.failed"
    CANCELLED = "async_job.cancelled"
    TEST = "webhook.test"
    """Sent by ``webhooks test``; never subscribed to, never retried."""

    @classmethod
    def of(cls, status: JobStatus) -> Event:
        return cls(f"async_job.{status.value}")


JOB_EVENTS: tuple[Event, ...] = (Event.COMPLETED, Event.FAILED, Event.CANCELLED)
"""The events an endpoint may subscribe to (all of them by default)."""


class DeliveryState(enum.StrEnum):
    """A delivery's state, stored in ``async_webhook_deliveries.state``.

    ``pending`` (due at ``next_attempt_at``) -> ``delivering`` (a worker holds its lease) ->
    ``delivered`` | ``failed`` (a permanent refusal: a redirect or a 4xx other than 408/429) |
    ``exhausted`` (retries used up), or back to ``pending`` for a retry. ``redeliver`` sends a
    finished delivery back to ``pending``, under the same ``webhook-id``.
    """

    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXHAUSTED = "exhausted"

    @property
    def finished(self) -> bool:
        return self in (DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.EXHAUSTED)


class AttemptOutcome(enum.StrEnum):
    """What became of one attempt, as the delivery log (``async_webhook_attempts``) records it."""

    DELIVERED = "delivered"
    RETRY = "retry"
    """Not delivered; another attempt is scheduled."""
    FAILED = "failed"
    """Refused for good (a redirect, or a 4xx other than 408 and 429)."""
    EXHAUSTED = "exhausted"
    """Not delivered, and the retry window is used up."""


def url_problem(url: str, *, allow_http: bool) -> str | None:
    """Why ``url`` cannot be an endpoint's URL, or None if it can (its address is checked
    before each delivery, not here: names may resolve differently by then)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "the URL must be an absolute https:// URL"
    if parts.scheme == "http" and not allow_http:
        return "the URL must be https:// (plain http:// needs webhooks.allow_http)"
    if parts.username is not None or parts.password is not None:
        return "the URL must not carry credentials; authenticate deliveries by their signature"
    if len(url) > 2048:
        return "the URL is longer than 2048 characters"
    return None


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form: ``whsec_`` and 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def message_id(delivery_id: object) -> str:
    """The ``webhook-id`` of a delivery: the same on every attempt, so receivers can dedupe."""
    return f"{MESSAGE_PREFIX}{getattr(delivery_id, 'hex', delivery_id)}"


def parse_message_id(text: str) -> uuid.UUID:
    """The delivery a ``webhook-id`` (``msg_`` and 32 hex digits) names; ValueError otherwise."""
    return uuid.UUID(hex=text.removeprefix(MESSAGE_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated (the current
    secret and, during a rotation's grace period, the previous one)."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets_)


class SecretBoxError(Exception):
    """A sealed secret cannot be opened: ``webhooks.secret_key`` is not the one that sealed it."""


class SecretBox:
    """Seals signing secrets (Fernet: AES-128-CBC with HMAC-SHA256) under a key derived from
    ``webhooks.secret_key``, so that the database alone, its dumps or its logs, never shows one.

    Its repr shows nothing of the key.
    """

    def __init__(self, passphrase: str) -> None:
        key = base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest())
        self._fernet = Fernet(key)

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(sealed)).decode()
        except InvalidToken:
            raise SecretBoxError(
                "cannot open an endpoint's signing secret: webhooks.secret_key differs from the "
                "key it was sealed with"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<hidden>)"


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Exponential backoff with jitter: ``initial`` seconds doubling up to ``ceiling``, each
    delay shifted by up to ``jitter`` of itself either way, for ``window`` seconds after the
    first attempt."""

    initial: float
    ceiling: float
    window: float
    jitter: float = 0.2

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before the attempt after attempt number ``attempt`` (1 for the first).

        A receiver's ``Retry-After`` is honoured when it asks for longer than the backoff.
        """
        base = min(self.initial * 2 ** max(attempt - 1, 0), self.ceiling)
        delay = base * random.uniform(1 - self.jitter, 1 + self.jitter)
        return max(delay, retry_after or 0.0)

    def gives_up(self, first_attempt_age: float, delay: float) -> bool:
        """Whether a retry ``delay`` seconds from now would fall outside the window."""
        return first_attempt_age + delay > self.window


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What an event says about its job, read when the delivery is first attempted."""

    job_id: str
    request_type: str
    status: str
    status_code: int | None
    result_url: str
    result_expires_at: datetime | None
    response: Any
    """The stored JSON result, when it is JSON and within the size cap."""
    response_omitted: str | None
    """Why the response is not inline (``too_large``, ``binary`` or ``expired``); None if it is."""
    error: dict[str, Any] | None
    error_omitted: str | None


def _timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def event_body(event: Event, created_at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a delivery: ``{"event", "created_at", "data"}``."""
    return {"event": event.value, "created_at": _timestamp(created_at), "data": data}


def job_data(outcome: JobOutcome) -> dict[str, Any]:
    """The ``data`` of a job's event: the response or error inline, or a flag saying why not
    (the client then fetches ``result_url``)."""
    data: dict[str, Any] = {
        "job_id": outcome.job_id,
        "request_type": outcome.request_type,
        "status": outcome.status,
        "status_code": outcome.status_code,
        "result_url": outcome.result_url,
        "result_expires_at": _timestamp(outcome.result_expires_at),
    }
    if outcome.status == JobStatus.COMPLETED:
        if outcome.response_omitted is None:
            data["response"] = outcome.response
        else:
            data["response_omitted"] = True
            data["response_omitted_reason"] = outcome.response_omitted
    elif outcome.error is not None:
        data["error"] = outcome.error
    else:
        data["error_omitted"] = True
        data["error_omitted_reason"] = outcome.error_omitted or "expired"
    return data
