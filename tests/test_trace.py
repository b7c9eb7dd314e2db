"""W3C trace context: a submit's traceparent is kept with its job, every upstream attempt is
sent as a child span of it, and the job's log lines carry its trace id."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from asyncgate.trace import TraceContext
from tests.conftest import Gateway
from tests.upstream import UpstreamThread

CHAT = "/v1/async/chat/completions"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

Sql = Callable[..., list[tuple[Any, ...]]]


def chat(model: str = "fake/ok") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-abc-def-01",
        f"00-{TRACE_ID}-00f067aa0ba902b7",
        f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01",
        f"ff-{TRACE_ID}-00f067aa0ba902b7-01",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
    ],
)
def test_an_invalid_traceparent_is_no_context(value: str) -> None:
    assert TraceContext.parse(value, "vendor=1") is None


def test_a_valid_traceparent_keeps_its_state_within_bounds() -> None:
    context = TraceContext.parse(f" {PARENT} ", "vendor=1")
    assert context == TraceContext(PARENT, "vendor=1")
    assert context.trace_id == TRACE_ID
    assert TraceContext.parse(PARENT, "v=" + "x" * 600) == TraceContext(PARENT, None)
    child = context.child_headers()
    version, trace_id, span_id, flags = child["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert len(span_id) == 16 and span_id != "00f067aa0ba902b7"
    assert child["tracestate"] == "vendor=1"


def test_each_upstream_attempt_is_a_child_span_of_the_submit(
    gateway_factory: Callable[..., Gateway],
    upstream: UpstreamThread,
    sql: Sql,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = gateway_factory(worker={"retry_tries": 3, "retry_base_seconds": 0.01})
    caplog.set_level(logging.INFO, logger="asyncgate")
    submitted = gateway.submit(
        CHAT, chat("fake/fail-first-2"), headers={"traceparent": PARENT, "tracestate": "v=1"}
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert gateway.wait_terminal(CHAT, job_id)["status"] == "completed"

    assert sql("SELECT traceparent, tracestate FROM async_jobs WHERE id = %s", job_id) == [
        (PARENT, "v=1")
    ]
    attempts = [r for r in upstream.requests if r.job_id == job_id]
    assert len(attempts) == 3
    spans = set()
    for attempt in attempts:
        _version, trace_id, span_id, flags = attempt.headers["traceparent"].split("-")
        assert (trace_id, flags) == (TRACE_ID, "01")
        assert attempt.headers["tracestate"] == "v=1"
        spans.add(span_id)
    assert len(spans) == 3 and "00f067aa0ba902b7" not in spans

    job_lines = [r for r in caplog.records if r.getMessage().startswith(f"job {job_id}")]
    traced = [r for r in job_lines if getattr(r, "trace_id", None) == TRACE_ID]
    assert {"pending", "processing", "completed"} <= {
        word for r in traced for word in r.getMessage().split()
    }
    assert all(f"trace_id={TRACE_ID}" in r.getMessage() for r in traced)


def test_an_invalid_traceparent_is_ignored_not_refused(
    gateway: Gateway, upstream: UpstreamThread, sql: Sql
) -> None:
    submitted = gateway.submit(
        CHAT, chat(), headers={"traceparent": "not-a-trace", "tracestate": "v=1"}
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert gateway.wait_terminal(CHAT, job_id)["status"] == "completed"
    assert sql("SELECT traceparent, tracestate FROM async_jobs WHERE id = %s", job_id) == [
        (None, None)
    ]
    [attempt] = [r for r in upstream.requests if r.job_id == job_id]
    assert "traceparent" not in attempt.headers and "tracestate" not in attempt.headers
