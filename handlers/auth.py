"""Virtual keys as they arrive, in every place the reference gateway reads them.

``x-bf-vk`` and the password of HTTP Basic always carry a virtual key. ``Authorization: Bearer``,
``x-api-key`` and ``x-goog-api-key`` carry one only when the value starts with ``sk-bf-``: any
other value there is a provider-style key (an SDK's placeholder, say) and is ignored. Several
places may carry the same key; two different keys in one request are refused.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from asyncgate.errors import BadRequest, ClientError, Unauthorized
from asyncgate.models.keys import KEY_PREFIX, KeyIdentity
from asyncgate.services import Services

ALWAYS_KEY_HEADERS = ("x-bf-vk",)
PREFIXED_KEY_HEADERS = ("x-api-key", "x-goog-api-key")


def presented_keys(headers: Mapping[str, str]) -> set[str]:
    """Every virtual key the request carries (usually none or one).

    Raises BadRequest for an ``Authorization: Basic`` header that cannot be decoded.
    """
    keys: set[str] = set()
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials.startswith(KEY_PREFIX):
            keys.add(credentials)
        elif scheme.lower() == "basic":
            password = _basic_password(credentials)
            if password:
                keys.add(password)
    for name in ALWAYS_KEY_HEADERS:
        value = headers.get(name)
        if value is not None:
            keys.add(value.strip())
    for name in PREFIXED_KEY_HEADERS:
        value = (headers.get(name) or "").strip()
        if value.startswith(KEY_PREFIX):
            keys.add(value)
    return keys


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest("malformed Authorization header", param="Authorization") from None
    return decoded.partition(":")[2]


async def resolve_key(
    services: Services, headers: Mapping[str, str], invalid: ClientError
) -> KeyIdentity | None:
    """The request's virtual key (its id and admin flag); None for an anonymous request.

    Raises ``invalid`` for an unknown, disabled or empty key, BadRequest for two different
    keys, and 401 for a request with no key at all when ``auth.required`` is on.
    """
    keys = presented_keys(headers)
    if not keys:
        if services.settings.auth.required:
            raise Unauthorized("a virtual key is required (Authorization: Bearer sk-bf-...)")
        return None
    if len(keys) > 1:
        raise BadRequest("the request carries two different virtual keys; send one")
    identity = await services.keys.lookup(keys.pop())
    if identity is None:
        raise invalid
    return identity


async def resolve_owner(
    services: Services, headers: Mapping[str, str], invalid: ClientError
) -> int | None:
    """The id of the request's virtual key; None for an anonymous request (see
    :func:`resolve_key`)."""
    identity = await resolve_key(services, headers, invalid)
    return None if identity is None else identity.id
