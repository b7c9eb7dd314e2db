"""Every error the app answers, mapped to the BifrostError shape in one place.

Registered on the app by :func:`register`. Nothing reaches a client as a stack trace: an
unexpected exception is logged and answered 500 with a generic message.
"""

from __future__ import annotations

import json
import logging

from connexion import AsyncApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from asyncgate.errors import GatewayError, error_body
from asyncgate.handlers import render
from asyncgate.models.committer import UnstorableRequest
from asyncgate.models.database import UNAVAILABLE, DatabaseUnavailable
from asyncgate.models.jobs import IdempotencyKeyReused, IdempotencyUnresolved

log = logging.getLogger("asyncgate.http")

_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
}


def _respond(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> ConnexionResponse:
    return ConnexionResponse(
        status_code=status,
        body=render.dumps(error_body(status, message, param=param)),
        mimetype=render.JSON,
        content_type=render.JSON,
        headers=dict(headers or {}),
    )


def _refused(request: ConnexionRequest, status: int, message: str) -> None:
    """A client error is the client's business: DEBUG, with the gateway's message only (which
    names fields, never their values)."""
    log.debug("refused %s %s: %d %s", request.method, request.url.path, status, message)


def gateway_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, GatewayError)
    _refused(request, exc.status_code, exc.message)
    return _respond(exc.status_code, exc.message, param=exc.param)


def database_unavailable(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return _respond(503, UNAVAILABLE, headers={"Retry-After": "1"})


def unstorable(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return _respond(400, str(exc))


def idempotency_key_reused(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, IdempotencyKeyReused)
    _refused(request, 422, str(exc))
    return _respond(422, str(exc), param="Idempotency-Key")


def idempotency_unresolved(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    """The job holding the key went away mid-submit; a retry finds the key free."""
    return _respond(
        503, "the request could not be committed; retry it", headers={"Retry-After": "1"}
    )


def problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    """Connexion's own validation problems (400 bad body or parameter, 415 content type)."""
    assert isinstance(exc, ProblemException)
    status = exc.status or 400
    detail = exc.detail or exc.title or "invalid request"
    message = f"invalid request: {detail}" if status == 400 else str(detail)
    _refused(request, status, message)
    return _respond(status, message)


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
        message = "malformed request body"
    return _respond(400, message)


def unexpected(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unexpected error", exc_info=exc)
    return _respond(500, "internal error; the request was not processed")


def register(app: AsyncApp) -> None:
    app.add_error_handler(GatewayError, gateway_error)
    app.add_error_handler(DatabaseUnavailable, database_unavailable)
    app.add_error_handler(UnstorableRequest, unstorable)
    app.add_error_handler(IdempotencyKeyReused, idempotency_key_reused)
    app.add_error_handler(IdempotencyUnresolved, idempotency_unresolved)
    app.add_error_handler(ProblemException, problem)
    app.add_error_handler(HTTPException, http_error)
    for exc_class in (MultiPartException, UnicodeDecodeError, RecursionError, json.JSONDecodeError):
        app.add_error_handler(exc_class, malformed_body)
    app.add_error_handler(Exception, unexpected)
