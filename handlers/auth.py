"""Virtual keys as they arrive: Bearer, Basic (the key is the password), x-bf-vk or x-api-key."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from asyncgate.errors import ClientError, Unauthorized
from asyncgate.services import Services

KEY_HEADERS = ("x-bf-vk", "x-api-key")


class _Malformed(Exception):
    pass


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the request carries, if any. A malformed Authorization header yields ``""``."""
    authorization = headers.get("authorization")
    if authorization:
        try:
            return _from_authorization(authorization)
        except _Malformed:
            return ""
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value is not None:
            return value.strip()
    return None


def _from_authorization(value: str) -> str:
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise _Malformed from exc
        user, _, password = decoded.partition(":")
        return password or user
    raise _Malformed


async def resolve_owner(
    services: Services, headers: Mapping[str, str], invalid: ClientError
) -> int | None:
    """The id of the request's virtual key; None for an anonymous request.

    Raises ``invalid`` for an unknown, disabled or malformed key, and 401 for a request with no
    key at all when ``auth.required`` is on.
    """
    key = presented_key(headers)
    if key is None:
        if services.settings.auth.required:
            raise Unauthorized("a virtual key is required (Authorization: Bearer sk-bf-...)")
        return None
    key_id = await services.keys.lookup(key) if key else None
    if key_id is None:
        raise invalid
    return key_id
