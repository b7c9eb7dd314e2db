"""Access to the shared services and the current request from inside a handler.

Both read the ASGI scope Connexion keeps for the running request, instead of building a request
object on every access.
"""

from __future__ import annotations

from typing import cast

from connexion.context import receive, scope
from starlette.datastructures import Headers
from starlette.types import Receive, Scope

from asyncgate.handlers.prepared import JSON_TEXT
from asyncgate.services import Services


def current_scope() -> Scope:
    """The ASGI scope of the request being handled."""
    return cast(Scope, scope._get_current_object())


def services() -> Services:
    """The services the app's lifespan created (see :mod:`asyncgate.app`)."""
    return cast(Services, current_scope()["state"]["services"])


def json_text() -> bytes | None:
    """The JSON body of the request being handled as it was received and validated; None when
    it had none (or a form)."""
    return cast("bytes | None", current_scope().get(JSON_TEXT))


def headers() -> Headers:
    return Headers(scope=current_scope())


def current_receive() -> Receive:
    """The ASGI ``receive`` of the request being handled."""
    return cast(Receive, receive._get_current_object())


async def disconnected(channel: Receive) -> None:
    """Return once the client of a request has gone away (its request body, if any, was read
    before and is skipped)."""
    while (await channel())["type"] != "http.disconnect":
        pass
