"""Access to the shared services and the current request from inside a handler.

Both read the ASGI scope Connexion keeps for the running request, instead of building a request
object on every access.
"""

from __future__ import annotations

from typing import Any, cast

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


HEADERS = "asyncgate.headers"
"""Scope key of the request's :class:`RequestHeaders`, made on first use."""


class RequestHeaders(Headers):
    """Starlette's request headers, whose lookups go through a dict made on the first one.

    Starlette scans the raw list and raises (then catches) a KeyError for every missing name;
    a submission asks for a dozen names it does not carry (keys, TTL, deadline, webhook,
    Idempotency-Key, trace context, Prefer). The first occurrence of a repeated name wins, as
    in Starlette; :meth:`getlist` and iteration are Starlette's own.
    """

    _index: dict[str, str] | None = None

    def _lookup(self) -> dict[str, str]:
        if self._index is None:
            raw = reversed(self.raw)
            self._index = {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}
        return self._index

    def get(self, key: str, default: Any = None) -> Any:
        return self._lookup().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return self._lookup()[key.lower()]

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower() in self._lookup()


def request_headers(scope: Scope) -> RequestHeaders:
    """The headers of the request ``scope`` belongs to, made once per request."""
    found = scope.get(HEADERS)
    if found is None:
        found = scope[HEADERS] = RequestHeaders(scope=scope)
    return cast(RequestHeaders, found)


def headers() -> RequestHeaders:
    """The headers of the request being handled."""
    return request_headers(current_scope())


def current_receive() -> Receive:
    """The ASGI ``receive`` of the request being handled."""
    return cast(Receive, receive._get_current_object())


async def disconnected(channel: Receive) -> None:
    """Return once the client of a request has gone away (its request body, if any, was read
    before and is skipped)."""
    while (await channel())["type"] != "http.disconnect":
        pass
