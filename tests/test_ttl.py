"""Result lifetime: the TTL header, expiry on read, and the sweeper that reclaims the rows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from asyncgate.config import SweeperConfig
from asyncgate.models.jobs import JobStore
from asyncgate.worker.sweeper import Sweeper
from tests.conftest import Gateway, wait_for
from tests.helpers import (
    CHAT,
    JOB_NOT_FOUND,
    TRANSCRIPTIONS,
    assert_error,
    chat,
    parse_time,
    submit_ok,
    with_store,
)

TTL = "x-bf-async-job-result-ttl"
Sql = Callable[..., list[tuple[Any, ...]]]


def kept_for(gateway: Gateway, sql: Sql, path: str, job_id: str) -> int:
    """Seconds between completion and expiry, as polled; checked against the stored TTL."""
    done = gateway.wait_terminal(path, job_id)
    assert done["status"] == "completed", done
    seconds = (parse_time(done["expires_at"]) - parse_time(done["completed_at"])).total_seconds()
    assert seconds == int(seconds)
    [(stored,)] = sql("SELECT ttl_seconds FROM async_jobs WHERE id = %s", job_id)
    assert stored == seconds
    return int(seconds)


def test_ttl_header_values(gateway: Gateway, sql: Sql) -> None:
    expected = {
        None: 3600,
        "120": 120,
        "45": 45,
        "1": 1,
        "abc": 3600,
        "": 3600,
        "1.5": 3600,
        "0": 3600,
        "-5": 3600,
        "2592000": 2592000,
        "2592001": 2592000,
    }
    jobs = {}
    for header, _ in expected.items():
        headers = {} if header is None else {TTL: header}
        jobs[header] = submit_ok(gateway, CHAT, json=chat(), headers=headers)
    got = {header: kept_for(gateway, sql, CHAT, job_id) for header, job_id in jobs.items()}
    assert got == expected


def test_ttl_above_maximum_is_clamped(gateway_factory: Callable[..., Gateway], sql: Sql) -> None:
    gateway = gateway_factory(jobs={"max_ttl": 600, "default_ttl": 300})
    over = submit_ok(gateway, CHAT, json=chat(), headers={TTL: "100000"})
    under = submit_ok(gateway, CHAT, json=chat(), headers={TTL: "599"})
    default = submit_ok(gateway, CHAT, json=chat())
    invalid = submit_ok(gateway, CHAT, json=chat(), headers={TTL: "soon"})
    assert kept_for(gateway, sql, CHAT, over) == 600
    assert kept_for(gateway, sql, CHAT, under) == 599
    assert kept_for(gateway, sql, CHAT, default) == 300
    assert kept_for(gateway, sql, CHAT, invalid) == 300


def test_ttl_applies_to_multipart_jobs(gateway: Gateway, sql: Sql) -> None:
    job_id = submit_ok(
        gateway,
        TRANSCRIPTIONS,
        files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"model": "fake/ok"},
        headers={TTL: "90"},
    )
    assert kept_for(gateway, sql, TRANSCRIPTIONS, job_id) == 90


def test_expired_result_is_404_before_the_sweeper_runs(gateway: Gateway, sql: Sql) -> None:
    job_id = submit_ok(
        gateway,
        TRANSCRIPTIONS,
        files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"model": "fake/ok"},
        headers={TTL: "1"},
    )
    done = gateway.wait_terminal(TRANSCRIPTIONS, job_id)
    assert done["status"] == "completed"
    assert parse_time(done["expires_at"]) - parse_time(done["completed_at"]) == timedelta(seconds=1)
    wait_for(lambda: gateway.poll(TRANSCRIPTIONS, job_id).status_code == 404, timeout=10)
    error = assert_error(gateway.poll(TRANSCRIPTIONS, job_id), 404)
    assert error["error"]["message"] == JOB_NOT_FOUND
    assert sql("SELECT status FROM async_jobs WHERE id = %s", job_id) == [("completed",)]
    assert sql("SELECT count(*) FROM async_job_files WHERE job_id = %s", job_id) == [(1,)]


def _insert_jobs(sql: Sql, count: int, *, expired: bool, with_files: bool) -> list[str]:
    """Finished jobs written directly: expired a second ago, or expiring in an hour."""
    rows = sql(
        """
        INSERT INTO async_jobs (id, kind, status, provider, model, request, ttl_seconds,
                                result, status_code, completed_at, expires_at)
        SELECT gen_random_uuid(), 'transcription', 'completed', 'fake', 'fake/ok', '{}'::jsonb,
               60, '{"text": "x"}'::jsonb, 200, now() - interval '1 minute',
               now() + CASE WHEN %s THEN interval '-1 second' ELSE interval '1 hour' END
        FROM generate_series(1, %s)
        RETURNING id::text
        """,
        expired,
        count,
    )
    ids = [row[0] for row in rows]
    if with_files:
        sql(
            """
            INSERT INTO async_job_files (job_id, position, field, filename, content_type, data)
            SELECT id::uuid, p, 'file', 'a.wav', 'audio/wav', '\\x52494646'::bytea
            FROM unnest(%s::text[]) AS id, generate_series(0, 1) AS p
            """,
            ids,
        )
    return ids


def test_sweeper_deletes_expired_jobs_and_their_files(database_url: str, sql: Sql) -> None:
    expired = _insert_jobs(sql, 25, expired=True, with_files=True)
    alive = _insert_jobs(sql, 5, expired=False, with_files=True)
    pending = sql(
        "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds) "
        "VALUES (gen_random_uuid(), 'chat_completion', 'fake', 'fake/ok', '{}', 1) "
        "RETURNING id::text"
    )[0][0]

    async def sweep(store: JobStore) -> int:
        return await Sweeper(store, SweeperConfig(batch=7)).sweep_once()

    assert with_store(database_url, sweep) == len(expired)
    remaining = {row[0] for row in sql("SELECT id::text FROM async_jobs")}
    assert remaining == {*alive, pending}
    files = sql("SELECT job_id::text, count(*) FROM async_job_files GROUP BY job_id")
    assert dict(files) == dict.fromkeys(alive, 2)
    assert with_store(database_url, sweep) == 0


def test_sweeper_pauses_between_batches_only(
    database_url: str, sql: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    expired = _insert_jobs(sql, 25, expired=True, with_files=True)
    alive = _insert_jobs(sql, 3, expired=False, with_files=False)
    pause = 0.0123
    left_at_pauses: list[int] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> Any:
        if delay == pause:
            left_at_pauses.append(sql("SELECT count(*) FROM async_jobs")[0][0] - len(alive))
        return await real_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", sleep)

    async def sweep(store: JobStore) -> int:
        return await Sweeper(store, SweeperConfig(batch=7, pause_seconds=pause)).sweep_once()

    assert with_store(database_url, sweep) == len(expired)
    # A pause after each full batch (25 = 7 + 7 + 7 + 4), none after the last.
    assert left_at_pauses == [18, 11, 4]
    assert {row[0] for row in sql("SELECT id::text FROM async_jobs")} == set(alive)


def test_two_sweepers_at_once_delete_each_row_once(database_url: str, sql: Sql) -> None:
    expired = _insert_jobs(sql, 2000, expired=True, with_files=False)
    _insert_jobs(sql, 300, expired=True, with_files=True)
    alive = _insert_jobs(sql, 40, expired=False, with_files=True)

    async def sweep_twice(store: JobStore) -> list[int]:
        config = SweeperConfig(batch=50, pause_seconds=0.0)
        return list(
            await asyncio.gather(
                Sweeper(store, config).sweep_once(), Sweeper(store, config).sweep_once()
            )
        )

    counts = with_store(database_url, sweep_twice)
    assert sum(counts) == len(expired) + 300
    assert {row[0] for row in sql("SELECT id::text FROM async_jobs")} == set(alive)
    assert sql("SELECT count(*) FROM async_job_files") == [(2 * len(alive),)]


def test_running_sweeper_removes_expired_jobs(
    gateway_factory: Callable[..., Gateway], sql: Sql
) -> None:
    gateway = gateway_factory(sweeper={"interval_seconds": 0.2})
    short = submit_ok(gateway, CHAT, json=chat(), headers={TTL: "1"})
    long = submit_ok(gateway, CHAT, json=chat(), headers={TTL: "600"})
    assert gateway.wait_terminal(CHAT, short)["status"] == "completed"
    assert gateway.wait_terminal(CHAT, long)["status"] == "completed"
    wait_for(lambda: not sql("SELECT 1 FROM async_jobs WHERE id = %s", short), timeout=10)
    assert_error(gateway.poll(CHAT, short), 404)
    assert gateway.poll(CHAT, long).status_code == 200
