"""``provider/model`` names and the list of models a job may be sent to, in order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncgate.errors import BadRequest


def split_model(name: object) -> tuple[str, str] | None:
    """``"openai/gpt-4o"`` -> ``("openai", "gpt-4o")``; None when it is not of that form."""
    if not isinstance(name, str):
        return None
    provider, sep, model = name.partition("/")
    if not sep or not provider or not model or any(c.isspace() for c in name):
        return None
    return provider, model


def fallback_names(fallbacks: Any) -> list[str]:
    """Fallbacks as ``provider/model`` strings, whichever of the two accepted forms they came in.

    Strings (chat, text, responses, embeddings, audio) and ``{"provider", "model"}`` objects
    (images) are both accepted, so a multipart form field may carry either.
    """
    if fallbacks is None:
        return []
    items = fallbacks if isinstance(fallbacks, list) else [fallbacks]
    names = []
    for item in items:
        if isinstance(item, Mapping):
            names.append(f"{item.get('provider')}/{item.get('model')}")
        else:
            names.append(str(item))
    return names


def candidate_models(request: Mapping[str, Any]) -> list[str]:
    """The requested model followed by its fallbacks."""
    return [str(request["model"]), *fallback_names(request.get("fallbacks"))]


def check_models(request: Mapping[str, Any], providers: Mapping[str, object]) -> str:
    """Raise BadRequest unless the model and every fallback name a configured provider.

    Returns the provider of the requested model.
    """
    for where, name in zip(
        ["model", *("fallbacks" for _ in fallback_names(request.get("fallbacks")))],
        candidate_models(request),
        strict=True,
    ):
        parsed = split_model(name)
        if parsed is None:
            raise BadRequest(
                f"{where} {name!r} must have the form provider/model, e.g. openai/gpt-4o-mini",
                param=where,
            )
        if parsed[0] not in providers:
            raise BadRequest(
                f"{where} {name!r} names provider {parsed[0]!r}, which is not configured",
                param=where,
            )
    provider = split_model(request["model"])
    assert provider is not None
    return provider[0]
