"""Access to the shared services and the current request from inside a handler."""

from __future__ import annotations

from typing import cast

from connexion import request
from starlette.datastructures import Headers

from asyncgate.services import Services


def services() -> Services:
    """The services the app's lifespan created (see :mod:`asyncgate.app`)."""
    return cast(Services, request.state.services)


def headers() -> Headers:
    return cast(Headers, request.headers)
