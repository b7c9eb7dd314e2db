"""The gateway's errors: the exception tree, the status-to-type table and the one builder of
the ``BifrostError`` body.

    GatewayError
    └── ClientError                  4xx answered in the BifrostError shape
        ├── BadRequest               400 invalid body, model, key, streaming
        ├── Unauthorized             401 no key while ``auth.required`` is on, or to list jobs
        ├── Forbidden                403 a key that is not an admin key, on the management API
        ├── NotFound                 404 unknown, expired, foreign or malformed job id
        ├── Conflict                 409 cancel of a finished job, a taken endpoint name
        └── PayloadTooLarge          413 body, upload or file-count limits

A reused Idempotency-Key with another request is the store's own exception
(:class:`asyncgate.models.jobs.IdempotencyKeyReused`), answered 422.

Failures of the job database are the store's own exceptions (:mod:`asyncgate.models.database`);
the mapping of every exception to an HTTP answer lives in :mod:`asyncgate.handlers.errors`.
"""

from __future__ import annotations

from typing import Any

JOB_NOT_FOUND = "job not found or expired"

CANCELLED_STATUS_CODE = 499
"""``status_code`` of a cancelled job (the "client closed request" convention): the client,
not the upstream or the gateway, ended it."""

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "idempotency_error",
    431: "request_header_fields_too_large",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
"""The ``error.type`` of an error the gateway itself answers with a given HTTP status."""


def extra_fields(provider: str, model_requested: str, request_type: str) -> dict[str, str]:
    """The ``extra_fields`` of an error about one job: its provider, model and kind."""
    return {"provider": provider, "model_requested": model_requested, "request_type": request_type}


def error_body(
    status_code: int,
    message: str,
    *,
    error_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    from_upstream: bool = False,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A ``BifrostError`` body; members without a value are left out.

    ``error_type`` defaults to the status's entry in :data:`ERROR_TYPES`; ``from_upstream``
    marks an error relayed from a provider (``is_bifrost_error: false``).
    """
    detail: dict[str, Any] = {"type": error_type or ERROR_TYPES.get(status_code, "server_error")}
    if code is not None:
        detail["code"] = code
    detail["message"] = message
    if param is not None:
        detail["param"] = param
    body: dict[str, Any] = {
        "is_bifrost_error": not from_upstream,
        "status_code": status_code,
        "error": detail,
    }
    if extra is not None:
        body["extra_fields"] = extra
    return body


def cancelled_error() -> dict[str, Any]:
    """The ``error`` stored with a cancelled job (its ``extra_fields`` are added by the store)."""
    return error_body(
        CANCELLED_STATUS_CODE, "the job was cancelled by its client", error_type="job_cancelled"
    )


class GatewayError(Exception):
    """Base of every error the gateway answers on purpose, with its HTTP status."""

    status_code = 500

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.status_code, self.message, param=self.param)


class ClientError(GatewayError):
    status_code = 400


class BadRequest(ClientError):
    status_code = 400


class Unauthorized(ClientError):
    status_code = 401


class Forbidden(ClientError):
    status_code = 403


class NotFound(ClientError):
    status_code = 404


class Conflict(ClientError):
    status_code = 409


class PayloadTooLarge(ClientError):
    status_code = 413


class NotConfigured(GatewayError):
    """503: the operation needs a setting this gateway lacks (say, ``webhooks.secret_key``)."""

    status_code = 503
