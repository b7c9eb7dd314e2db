"""W3C trace context (``traceparent``, ``tracestate``) carried from a submit to its job's work.

A submit's trace context is stored with its job; each upstream attempt is sent as a child of
it (the same trace id, a span id of its own), and the job's log lines name the trace id. A
malformed ``traceparent`` is ignored, as the W3C recommendation asks of a receiver, and so is a
``tracestate`` without a valid ``traceparent`` beside it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
MAX_TRACESTATE = 512
"""Bytes of ``tracestate`` kept; the recommendation lets a vendor drop a longer one whole."""


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A valid ``traceparent`` and the ``tracestate`` that came with it, if any."""

    traceparent: str
    tracestate: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> TraceContext | None:
        """The context a request carries, or None when it has none that is valid."""
        return cls.parse(headers.get("traceparent"), headers.get("tracestate"))

    @classmethod
    def parse(cls, traceparent: str | None, tracestate: str | None) -> TraceContext | None:
        """The context of stored or received header values; None for an invalid traceparent
        (version ff, an all-zero trace or span id, or the wrong form)."""
        if traceparent is None:
            return None
        match = _TRACEPARENT.match(traceparent.strip())
        if match is None:
            return None
        version, trace_id, span_id, _flags = match.groups()
        if version == "ff" or set(trace_id) == {"0"} or set(span_id) == {"0"}:
            return None
        state = tracestate.strip() if tracestate else None
        if state and (len(state) > MAX_TRACESTATE or not state.isascii()):
            state = None
        return cls(match.group(0), state or None)

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    def child_headers(self) -> dict[str, str]:
        """Headers for one outgoing request: a new span id under the same trace and flags."""
        _version, trace_id, _span, flags = self.traceparent.split("-")
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"}
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        return headers


def log_fields(trace: TraceContext | None) -> tuple[str, dict[str, str]]:
    """A job log line's trace parts: a `` trace_id=...`` suffix for its text and the
    ``extra`` that gives JSON lines their ``trace_id`` field (both empty without a trace)."""
    if trace is None:
        return "", {}
    return f" trace_id={trace.trace_id}", {"trace_id": trace.trace_id}
