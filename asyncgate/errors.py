"""The gateway's exception tree; each HTTP-facing error knows its status and error type.

    GatewayError
    ├── ClientError                  4xx answered in the BifrostError shape
    │   ├── BadRequest               400 invalid body, model, key, streaming
    │   ├── Unauthorized             401 no key while ``auth.required`` is on
    │   ├── NotFound                 404 unknown, expired, foreign or malformed job id
    │   ├── MethodNotAllowed         405
    │   ├── PayloadTooLarge          413 body, upload or file-count limits
    │   └── UnsupportedMediaType     415
    └── ServiceUnavailable           503 the database cannot be reached

The mapping to HTTP responses lives in :mod:`handlers.errors`, in one place.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway answers on purpose."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ClientError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class BadRequest(ClientError):
    status_code = 400


class Unauthorized(ClientError):
    status_code = 401
    error_type = "authentication_error"


class NotFound(ClientError):
    status_code = 404
    error_type = "not_found_error"


class MethodNotAllowed(ClientError):
    status_code = 405


class PayloadTooLarge(ClientError):
    status_code = 413


class UnsupportedMediaType(ClientError):
    status_code = 415


class ServiceUnavailable(GatewayError):
    status_code = 503
    error_type = "service_unavailable"


JOB_NOT_FOUND = "job not found or expired"
