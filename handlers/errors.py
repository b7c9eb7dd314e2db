"""Every error the app answers, mapped to the BifrostError shape in one place.

Registered on the app by :func:`register`. Nothing reaches a client as a stack trace: an
unexpected exception is logged and answered 500 with a generic message.
"""

from __future__ import annotations

import json
import logging

from asyncgate.handlers import render
from connexion import AsyncApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from asyncgate.errors import GatewayError, ServiceUnavailable

log = logging.getLogger("asyncgate.http")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    503: "service_unavailable",
}
_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
}


def _respond(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> ConnexionResponse:
    response = render.error(
        status, message, error_type=_TYPES.get(status, "server_error"), param=param, headers=headers
    )
    return ConnexionResponse(
        status_code=status,
        body=response.body,
        mimetype=render.JSON,
        content_type=render.JSON,
        headers=dict(headers or {}),
    )


def gateway_error(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, GatewayError)
    headers = {"Retry-After": "1"} if isinstance(exc, ServiceUnavailable) else None
    return _respond(exc.status_code, exc.message, param=exc.param, headers=headers)


def problem(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    """Connexion's own validation problems (400 bad body or parameter, 415 content type)."""
    assert isinstance(exc, ProblemException)
    status = exc.status or 400
    detail = exc.detail or exc.title or "invalid request"
    prefix = "invalid request: " if status == 400 else ""
    return _respond(status, f"{prefix}{detail}")


def http_error(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    message = _MESSAGES.get(exc.status_code) or str(exc.detail)
    return _respond(exc.status_code, message, headers=dict(exc.headers or {}))


def malformed_body(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    """Bodies that cannot even be parsed: broken multipart, bad UTF-8, absurd nesting."""
    if isinstance(exc, MultiPartException):
        message = f"malformed multipart body: {exc.message}"
    elif isinstance(exc, UnicodeDecodeError):
        message = "the request body is not valid UTF-8"
    elif isinstance(exc, RecursionError):
        message = "the request body is nested too deeply"
    else:
        message = f"malformed request body: {exc}"
    return _respond(400, message)


def unexpected(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unexpected error", exc_info=exc)
    return _respond(500, "internal error; the request was not processed")


def register(app: AsyncApp) -> None:
    app.add_error_handler(GatewayError, gateway_error)
    app.add_error_handler(ProblemException, problem)
    app.add_error_handler(HTTPException, http_error)
    for exc_class in (MultiPartException, UnicodeDecodeError, RecursionError, json.JSONDecodeError):
        app.add_error_handler(exc_class, malformed_body)
    app.add_error_handler(Exception, unexpected)
