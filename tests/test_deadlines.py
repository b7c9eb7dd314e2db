"""Deadlines a client sets with ``x-bf-async-timeout``: a job not terminal by then fails with
504, whether it was still pending or running; a missing or bad value sets none; a large one is
clamped. Against a real gateway, worker and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from tests.conftest import Gateway, wait_for
from tests.helpers import CHAT, chat, for_job
from tests.upstream import UpstreamThread

Sql = Callable[..., list[tuple[Any, ...]]]
TIMEOUT = "x-bf-async-timeout"


def deadline_seconds(sql: Sql, job_id: str) -> float | None:
    [(seconds,)] = sql(
        "SELECT extract(epoch FROM deadline_at - created_at)::float8 FROM async_jobs WHERE id = %s",
        job_id,
    )
    return seconds


def test_a_running_job_past_its_deadline_fails_504(
    gateway: Gateway, upstream: UpstreamThread
) -> None:
    response = gateway.submit(CHAT, chat("fake/delay-10"), headers={TIMEOUT: "1"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wait_for(lambda: for_job(upstream, job_id), timeout=10)
    done = gateway.wait_terminal(CHAT, job_id, timeout=15)
    assert done["status"] == "failed" and done["status_code"] == 504, done
    assert "deadline" in done["error"]["error"]["message"]
    assert done["error"]["error"]["type"] == "job_deadline_exceeded"


def test_a_pending_job_past_its_deadline_fails_504_without_running(
    gateway: Gateway, database_url: str, upstream: UpstreamThread
) -> None:
    job_id = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds, deadline_at) "
            "VALUES (%s, 'chat_completion', 'fake', 'fake/ok', %s::jsonb, 600, "
            "now() - interval '1 second')",
            (job_id, '{"model": "fake/ok", "messages": [{"role": "user", "content": "x"}]}'),
        )
    done = gateway.wait_terminal(CHAT, str(job_id), timeout=15)
    assert done["status"] == "failed" and done["status_code"] == 504, done
    assert "deadline" in done["error"]["error"]["message"]
    assert done["error"]["extra_fields"]["request_type"] == "chat_completion"
    assert for_job(upstream, str(job_id)) == []


def test_missing_bad_and_large_values(gateway_factory: Callable[..., Gateway], sql: Sql) -> None:
    gateway = gateway_factory(jobs={"max_timeout_seconds": 300})
    expected: dict[str | None, float | None] = {
        None: None,
        "soon": None,
        "-5": None,
        "0": None,
        "1_000": None,
        "+60": None,
        "120": 120.0,
        "999999999999": 300.0,
    }
    for value, seconds in expected.items():
        headers = {} if value is None else {TIMEOUT: value}
        response = gateway.submit(CHAT, chat(), headers=headers)
        assert response.status_code == 202, (value, response.text)
        assert deadline_seconds(sql, response.json()["id"]) == seconds, value
    finished = gateway.submit(CHAT, chat(), headers={TIMEOUT: "60"})
    done = gateway.wait_terminal(CHAT, finished.json()["id"])
    assert done["status"] == "completed"
