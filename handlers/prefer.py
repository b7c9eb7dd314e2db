"""The ``Prefer`` request header (RFC 7240), read leniently for the one preference we honour.

``Prefer: wait=N`` asks the gateway to hold a poll (or submit) answer until the job is terminal
or ``N`` seconds pass. Other preferences are ignored; so is a malformed ``wait``, since a
preference is never a reason to refuse a request. When ``wait`` appears more than once, the
first counts (RFC 7240 section 2).
"""

from __future__ import annotations

from collections.abc import Iterable

PREFER_HEADER = "prefer"
APPLIED_HEADER = "Preference-Applied"


def _unquote(value: str) -> str:
    value = value.strip(" \t")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def requested_wait(values: Iterable[str]) -> int | None:
    """Seconds of the first ``wait`` preference among the header ``values``, or None when there
    is none or it is not a non-negative integer."""
    for header in values:
        for preference in header.split(","):
            token = preference.partition(";")[0]
            name, equals, value = token.partition("=")
            if name.strip(" \t").lower() != "wait":
                continue
            digits = _unquote(value) if equals else ""
            if digits.isascii() and digits.isdigit():
                return int(digits)
            return None
    return None


def applied_wait(values: Iterable[str], max_wait: int) -> int | None:
    """The wait to honour: the requested one cut to ``max_wait``; None when none was asked."""
    wanted = requested_wait(values)
    return None if wanted is None else min(wanted, max_wait)
