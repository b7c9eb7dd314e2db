"""Access to the shared services and the current request from inside a handler.

Both read the ASGI scope Connexion keeps for the running request, instead of building a request
object on every access.
"""

from __future__ import annotations

from typing import cast

from connexion.context import receive, scope
from starlette.datastructures import Headers
from starlette.types import Scope

from asyncgate.services import Services


def _current_scope() -> Scope:
    return cast(Scope, scope._get_current_object())


def services() -> Services:
    """The services the app's lifespan created (see :mod:`asyncgate.app`)."""
    return cast(Services, _current_scope()["state"]["services"])


def headers() -> Headers:
    return Headers(scope=_current_scope())


async def disconnected() -> None:
    """Return once the client of the current request has gone away (its request body, if any,
    was already read by then and is skipped)."""
    while (await receive())["type"] != "http.disconnect":
        pass
