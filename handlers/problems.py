"""Validation failures as messages a client can act on: the field at fault and what it must be.

jsonschema's own messages echo the offending value, and for ``oneOf`` the whole instance (a
request body, an uploaded form); these never do. They name the field by its path in the body
(``documents[2].text``) and say what the spec requires of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from jsonschema import ValidationError

_ARTICLE = {"array": "an", "integer": "an", "object": "an"}
# validator -> (message when the bound is 1, message otherwise)
_BOUNDS = {
    "minLength": ("must not be empty", "must be at least {n} characters long"),
    "maxLength": ("", "must be at most {n} characters long"),
    "minItems": ("must not be empty", "must have at least {n} items"),
    "maxItems": ("", "must have at most {n} items"),
    "minimum": ("", "must be >= {n}"),
    "maximum": ("", "must be <= {n}"),
}


def field_path(error: ValidationError) -> str:
    """``documents[2].text`` for the error's place in the body; ``body`` for the body itself."""
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _join(parent: str, name: str) -> str:
    return name if parent == "body" else f"{parent}.{name}"


def _a(type_name: Any) -> str:
    names = type_name if isinstance(type_name, list) else [type_name]
    return " or ".join(f"{_ARTICLE.get(str(n), 'a')} {n}" for n in names)


def describe(error: ValidationError) -> tuple[str, str]:
    """(message, param) for one validation error, without the client's values in it."""
    where = field_path(error)
    kind, expected, schema = error.validator, error.validator_value, error.schema
    if kind in ("oneOf", "anyOf") and error.context:
        return _describe_alternatives(error, where)
    if kind == "oneOf":  # valid under several branches at once
        members = [m for b in expected if isinstance(b, dict) for m in b.get("required", ())]
        if members:
            return f"{where} must carry exactly one of: {', '.join(members)}", members[0]
        return f"{where} matches more than one of its allowed forms", where
    if kind == "required":
        instance = error.instance if isinstance(error.instance, dict) else {}
        missing = next((name for name in expected if name not in instance), expected[0])
        param = _join(where, missing)
        return f"{param} is required", param
    if kind == "type":
        return f"{where} must be {_a(expected)}", where
    if kind == "enum":
        return f"{where} must be one of: {', '.join(map(str, expected))}", where
    if kind in _BOUNDS:
        at_one, otherwise = _BOUNDS[kind]
        if kind in ("minimum", "maximum") and schema.get(f"exclusive{kind.title()}"):
            otherwise = otherwise.replace("=", "")
        return (
            f"{where} {at_one if expected == 1 and at_one else otherwise.format(n=expected)}",
            where,
        )
    if kind == "pattern":
        wanted = schema.get("description")
        return (
            f"{where} must be {wanted}" if wanted else f"{where} is not in the expected form"
        ), where
    if kind == "additionalProperties":
        return f"{where} has members the spec does not allow", where
    return f"{where} is not valid ({kind})", where


def _describe_alternatives(error: ValidationError, where: str) -> tuple[str, str]:
    """A ``oneOf``/``anyOf`` failure: the branch the value was evidently meant for, if any."""
    branches: dict[int, list[ValidationError]] = defaultdict(list)
    for sub in error.context or ():
        branches[int(sub.relative_schema_path[0])].append(sub)
    intended = [errs for errs in branches.values() if not _wrong_shape(errs, error)]
    if intended:
        deepest = max(intended[0], key=lambda e: len(e.absolute_path))
        return describe(deepest)
    choices = _discriminator_choices(branches.values(), error)
    if choices is not None:
        name, values = choices
        param = _join(where, name)
        return f"{param} must be one of: {', '.join(values)}", param
    types = [b.get("type") for b in error.validator_value if isinstance(b, dict)]
    if all(types):
        return (
            f"{where} must be {' or '.join(_a(t) for t in dict.fromkeys(map(str, types)))}",
            where,
        )
    return f"{where} does not match any of its allowed forms", where


def _wrong_shape(errors: Sequence[ValidationError], parent: ValidationError) -> bool:
    """Whether a branch failed on the value's type or on a discriminating ``enum`` member, i.e.
    the value was not meant for that branch at all."""
    depth = len(parent.absolute_path)
    for sub in errors:
        relative = len(sub.absolute_path) - depth
        if sub.validator == "type" and relative == 0:
            return True
        if sub.validator == "enum" and relative == 1:
            return True
    return False


def _discriminator_choices(branches: Any, parent: ValidationError) -> tuple[str, list[str]] | None:
    """When every branch refused the same member's ``enum``, that member and all its values."""
    depth = len(parent.absolute_path)
    name: str | None = None
    values: list[str] = []
    for errors in branches:
        enums = [e for e in errors if e.validator == "enum" and len(e.absolute_path) == depth + 1]
        if not enums:
            return None
        member = str(enums[0].absolute_path[-1])
        if name not in (None, member):
            return None
        name = member
        values.extend(str(v) for v in enums[0].validator_value)
    return (name, values) if name is not None else None
