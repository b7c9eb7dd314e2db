"""``asyncgate jobs`` and the inspection views, against the test database: tables and JSON,
exit statuses, the guards on requeue and cancel, purges in batches and their interruption."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pty
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from asyncgate.cli import main
from asyncgate.dba_args import when
from asyncgate.kinds import Kind
from asyncgate.models import migrate
from asyncgate.models.jobs import JobStore, JobView
from tests.conftest import Gateway, wait_for
from tests.helpers import (
    CHAT,
    PYTHON,
    REPO,
    chat,
    clean_environ,
    create_key,
    insert_job,
    new_database,
    submit_ok,
    with_store,
)
from tests.test_cli import config_for
from tests.test_migrations import query

Sql = Callable[..., list[tuple[Any, ...]]]
Jobs = Callable[..., tuple[int, str, str]]

ERROR = """'{"error": {"type": "upstream_error", "message": "boom"}}'"""
STATE_COLUMNS = {
    "pending": {},
    "processing": {
        "lease_owner": "'worker-1'",
        "lease_expires_at": "{lease}",
        "attempts": "1",
        "started_at": "now()",
    },
    "completed": {"result": """'{"answer": 42}'""", "status_code": "200", "attempts": "1"},
    "failed": {"error": ERROR, "status_code": "502", "attempts": "3"},
    "cancelled": {"error": ERROR, "status_code": "499"},
}


def insert(
    sql: Sql,
    status: str = "pending",
    *,
    kind: str = "chat_completion",
    owner: int | None = None,
    created: str = "now()",
    done: str = "now()",
    expires: str = "interval '1 hour'",
    lease: str = "now() + interval '30 seconds'",
    model: str = "fake/ok",
) -> str:
    """A job row in ``status``, with the columns its CHECK constraints want; returns its id.
    ``created``, ``done`` and ``lease`` are SQL times; ``expires`` is added to ``done``."""
    columns = {
        "kind": f"'{kind}'",
        "status": f"'{status}'",
        "provider": "'fake'",
        "model": f"'{model}'",
        "request": """'{"model": "fake/ok", "messages": []}'""",
        "ttl_seconds": "3600",
        "owner_key_id": "NULL" if owner is None else str(owner),
        "created_at": created,
    }
    columns.update({k: v.replace("{lease}", lease) for k, v in STATE_COLUMNS[status].items()})
    if status in ("completed", "failed", "cancelled"):
        columns.update(completed_at=done, expires_at=f"{done} + {expires}")
    names, values = ", ".join(columns), ", ".join(columns.values())
    [(job_id,)] = sql(
        f"INSERT INTO async_jobs (id, {names}) VALUES (gen_random_uuid(), {values}) RETURNING id"
    )
    return str(job_id)


def rows(stdout: str, header: list[str]) -> list[list[str]]:
    """The cells of a table, after checking its header."""
    first, *rest = stdout.splitlines()
    assert first.split() == header
    return [re.split(r" {2,}", line) for line in rest]


@pytest.fixture
def jobs(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> Iterator[Jobs]:
    """``asyncgate jobs ...`` run in this process: (exit status, stdout, stderr)."""
    config = config_for(tmp_path, database_url)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(["--config", str(config), "jobs", *args])
        except SystemExit as exc:  # argparse refusing the arguments
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    root.handlers[:], root.level = handlers, level


def test_list_filters_and_prints_a_table_or_json(jobs: Jobs, sql: Sql, database_url: str) -> None:
    create_key(database_url, "team-a")
    [(key_id,)] = sql("SELECT id FROM virtual_keys WHERE name = 'team-a'")
    old = insert(sql, "failed", kind="embedding", created="now() - interval '3 hours'")
    mine = insert(sql, "completed", owner=key_id, created="now() - interval '2 minutes'")
    newest = insert(sql, "pending", created="now() - interval '1 minute'")

    code, out, _ = jobs("list")
    assert code == 0
    header = ["ID", "KIND", "STATUS", "KEY", "MODEL", "ATTEMPTS", "CODE", "CREATED", "FINISHED"]
    listed = rows(out, header)
    assert [r[0] for r in listed] == [newest, mine, old]  # newest first
    assert listed[1][1:7] == ["chat_completion", "completed", "team-a", "fake/ok", "1", "200"]
    assert listed[0][3] == "-" and listed[0][8] == "-"
    assert listed[2][1:3] == ["embedding", "failed"]

    def ids(*args: str) -> list[str]:
        code, out, err = jobs("list", "--json", *args)
        assert code == 0, err
        return [job["id"] for job in json.loads(out)["jobs"]]

    assert ids("--status", "failed") == [old]
    assert ids("--kind", "chat_completion") == [newest, mine]
    assert ids("--key", "team-a") == [mine]
    assert ids("--since", "1h") == [newest, mine]
    assert ids("--since", "90s") == [newest]
    assert ids("--limit", "2") == [newest, mine]
    assert ids("--status", "completed", "--kind", "embedding") == []

    code, out, _ = jobs("list", "--json", "--key", "team-a")
    [document] = json.loads(out)["jobs"]
    assert document["key_name"] == "team-a" and document["status_code"] == 200
    assert document["created_at"].endswith("+00:00") and document["completed_at"]

    code, out, err = jobs("list", "--key", "nobody", "--json")
    assert code == 1 and json.loads(out) == {"jobs": []}
    assert "no key named 'nobody'" in err
    for bad in (["--since", "yesterday"], ["--limit", "0"], ["--status", "running"]):
        code, out, err = jobs("list", *bad)
        assert code == 2 and out == "", bad
        assert "error:" in err


def test_when_reads_iso_times_and_durations() -> None:
    assert when("2026-01-02T03:04:05Z").isoformat() == "2026-01-02T03:04:05+00:00"
    assert when("2026-01-02 03:04").isoformat() == "2026-01-02T03:04:00+00:00"  # UTC if unsaid
    assert when("2026-01-02T03:04:05+02:00").utcoffset() is not None
    age = time.time() - when("2h").timestamp()
    assert 7199 < age < 7210
    assert 6.9 * 86400 < time.time() - when("1w").timestamp() < 7.1 * 86400


def test_show_prints_request_outcome_lease_and_times(jobs: Jobs, sql: Sql) -> None:
    failed = insert(sql, "failed")
    running = insert(sql, "processing")

    code, out, _ = jobs("show", failed)
    assert code == 0
    fields = dict(re.split(r" {2,}", line, maxsplit=1) for line in out.split("\n\n")[0].split("\n"))
    assert fields["FIELD"] == "VALUE"
    assert fields["id"] == failed and fields["status"] == "failed"
    assert fields["attempts"] == "3" and fields["status_code"] == "502"
    assert fields["key"] == "- (public)" and fields["lease_owner"] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fields["completed_at"])
    assert "\nrequest:\n{\n" in out and '"model": "fake/ok"' in out
    assert "\nerror:\n" in out and '"message": "boom"' in out
    assert "\nresult:" not in out

    code, out, _ = jobs("show", running, "--json")
    assert code == 0
    job = json.loads(out)["job"]
    assert job["status"] == "processing" and job["lease_owner"] == "worker-1"
    assert job["lease_expires_at"] and job["started_at"] and job["completed_at"] is None
    assert job["request"] == {"model": "fake/ok", "messages": []}
    assert job["result"] is None and job["error"] is None and job["files"] == 0

    code, out, err = jobs("show", "00000000-0000-0000-0000-000000000000", "--json")
    assert code == 1 and json.loads(out) == {"job": None}
    assert "no job 00000000-0000-0000-0000-000000000000" in err
    code, out, err = jobs("show", "not-a-uuid")
    assert code == 2 and "'not-a-uuid' is not a job id" in err


def test_stats_counts_the_queue_and_recent_throughput(jobs: Jobs, sql: Sql) -> None:
    insert(sql, "pending", created="now() - interval '90 seconds'")
    insert(sql, "pending")
    insert(sql, "processing", kind="embedding")
    insert(sql, "completed", done="now() - interval '20 seconds'")
    insert(sql, "completed", done="now() - interval '3 minutes'")
    insert(sql, "failed", done="now() - interval '10 minutes'")
    insert(sql, "cancelled", done="now() - interval '1 hour'")

    code, out, _ = jobs("stats", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["total"] == 7
    assert stats["by_status"] == {
        "pending": 2,
        "processing": 1,
        "completed": 2,
        "failed": 1,
        "cancelled": 1,
    }
    assert {"status": "processing", "kind": "embedding", "jobs": 1} in stats["counts"]
    assert {"status": "pending", "kind": "chat_completion", "jobs": 2} in stats["counts"]
    assert 89 <= stats["oldest_pending_seconds"] < 150
    assert stats["finished"] == {"1m": 1, "5m": 2, "15m": 3}

    code, out, _ = jobs("stats")
    assert code == 0
    table, summary = out.split("\n\n")
    assert ["pending", "chat_completion", "2"] in rows(table, ["STATUS", "KIND", "JOBS"])
    assert re.search(r"oldest pending: 1m 3\ds", summary)
    assert "finished: 1 in 1 min, 2 in 5 min, 3 in 15 min" in summary

    sql("DELETE FROM async_jobs WHERE status = 'pending'")
    assert json.loads(jobs("stats", "--json")[1])["oldest_pending_seconds"] is None
    assert "oldest pending: none pending" in jobs("stats")[1]


def test_requeue_moves_only_failed_and_cancelled_jobs(jobs: Jobs, sql: Sql) -> None:
    failed = insert(sql, "failed", created="now() - interval '2 days'")
    cancelled = insert(sql, "cancelled")
    completed = insert(sql, "completed")
    pending = insert(sql, "pending")
    missing = "00000000-0000-0000-0000-000000000001"

    code, out, err = jobs("requeue", failed, cancelled, completed, pending, missing)
    assert code == 1
    outcomes = dict(map(tuple, rows(out, ["ID", "OUTCOME"])))
    assert outcomes == {
        failed: "requeued",
        cancelled: "requeued",
        completed: "refused: is completed",
        pending: "refused: is pending",
        missing: "not found",
    }
    assert f"job {completed} is completed: not requeued" in err and f"no job {missing}" in err
    reset = sql(
        "SELECT status, attempts, error, status_code, completed_at, expires_at, "
        "created_at > now() - interval '1 minute' FROM async_jobs WHERE id = %s",
        failed,
    )
    assert reset == [("pending", 0, None, None, None, None, True)]
    assert sql("SELECT status FROM async_jobs WHERE id = %s", completed) == [("completed",)]

    code, out, _ = jobs("requeue", failed, "--json")  # pending now: refused, as a document
    assert code == 1
    assert json.loads(out) == {
        "requeued": [],
        "unchanged": [{"id": failed, "status": "pending"}],
        "not_found": [],
    }


def test_requeue_failed_since_takes_the_recent_failures(jobs: Jobs, sql: Sql) -> None:
    recent = insert(sql, "failed", done="now() - interval '5 minutes'")
    insert(sql, "failed", done="now() - interval '2 hours'")
    insert(sql, "cancelled", done="now() - interval '1 minute'")

    code, out, _ = jobs("requeue", "--failed-since", "30m", "--json")
    assert code == 0
    assert json.loads(out) == {"requeued": [recent], "unchanged": [], "not_found": []}
    statuses = sql("SELECT status, count(*) FROM async_jobs GROUP BY 1 ORDER BY 1")
    assert statuses == [("cancelled", 1), ("failed", 1), ("pending", 1)]

    for bad in ([], ["--failed-since", "1h", recent]):
        code, _, err = jobs("requeue", *bad)
        assert code == 2 and "give job ids or --failed-since" in err


def test_cancel_stops_unfinished_jobs_only(jobs: Jobs, sql: Sql) -> None:
    pending = insert(sql, "pending")
    running = insert(sql, "processing")
    cancelled = insert(sql, "cancelled")
    completed = insert(sql, "completed")

    code, out, _ = jobs("cancel", pending, running, cancelled, "--json")
    assert code == 0  # cancelling a cancelled job again is no refusal
    assert json.loads(out) == {
        "cancelled": [pending, running],
        "unchanged": [{"id": cancelled, "status": "cancelled"}],
        "not_found": [],
    }
    stored = sql(
        "SELECT status, status_code, lease_owner, lease_expires_at, error->'error'->>'type', "
        "error->'extra_fields'->>'request_type', expires_at > now() "
        "FROM async_jobs WHERE id = %s",
        running,
    )
    assert stored == [("cancelled", 499, None, None, "job_cancelled", "chat_completion", True)]

    code, out, err = jobs("cancel", completed, cancelled)
    assert code == 1
    assert dict(map(tuple, rows(out, ["ID", "OUTCOME"]))) == {
        completed: "refused: is completed",
        cancelled: "already cancelled",
    }
    assert f"job {completed} is completed: not cancelled" in err
    assert sql("SELECT status FROM async_jobs WHERE id = %s", completed) == [("completed",)]
    code, _, err = jobs("cancel")
    assert code == 2 and "ID" in err


def test_a_requeued_job_runs_again_and_polls_see_it(
    gateway_factory: Callable[..., Gateway], jobs: Jobs
) -> None:
    gateway = gateway_factory(worker={"retry_tries": 1})
    job_id = submit_ok(gateway, CHAT, json=chat("fake/fail-first-1"))
    assert gateway.wait_terminal(CHAT, job_id)["status"] == "failed"
    assert gateway.poll(CHAT, job_id).json()["status"] == "failed"  # now cached by the API

    code, out, _ = jobs("requeue", job_id)
    assert code == 0 and f"{job_id}  requeued" in out

    # The API drops its cached answer when it hears of the requeue, a moment after the commit.
    def completed() -> dict[str, Any] | None:
        body: dict[str, Any] = gateway.poll(CHAT, job_id).json()
        return body if body["status"] == "completed" else None

    done = wait_for(completed)
    assert done["result"]["choices"][0]["message"]["content"] == "hello"


def test_a_poll_read_before_a_requeue_is_not_cached_after_it(database_url: str) -> None:
    job_id = uuid.UUID(insert_job(database_url))

    def finish(status: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE async_jobs SET status = %s, status_code = 200, result = '{}',"
                " error = '{}', completed_at = now(), expires_at = now() + interval '1 hour'"
                " WHERE id = %s",
                (status, job_id),
            )

    async def polls(store: JobStore) -> list[str | None]:
        def poll() -> asyncio.Task[JobView | None]:
            return asyncio.create_task(store.get(job_id, Kind.CHAT_COMPLETION, None))

        reading = poll()
        await asyncio.sleep(0)  # the poll waits on its read of the failed job...
        store.forget(job_id)  # ...when the requeue's notification arrives
        seen = [await reading]
        finish("completed")  # the requeued job ends anew
        seen.append(await poll())
        finish("failed")  # a change no poll may see: the answer above is cached
        seen.append(await poll())
        return [view.status.value if view else None for view in seen]

    finish("failed")
    # the overtaken read is answered but not kept; the next answer is read and cached
    assert with_store(database_url, polls) == ["failed", "completed", "completed"]


def test_purge_before_deletes_finished_jobs_in_batches(jobs: Jobs, sql: Sql) -> None:
    old = "now() - interval '2 hours'"
    purged = [insert(sql, s, created=old) for s in ("completed",) * 3 + ("failed", "cancelled")]
    sql(
        "INSERT INTO async_job_files (job_id, position, field, data) VALUES (%s, 0, 'file', 'x')",
        purged[0],
    )
    kept = [insert(sql, "pending", created=old), insert(sql, "processing", created=old)]
    kept.append(insert(sql, "completed"))  # submitted after the cut

    code, out, _ = jobs("purge", "--before", "1h", "--batch-size", "2", "--json")
    assert code == 0
    assert json.loads(out) == {"deleted": 5, "batches": 3, "interrupted": False}
    assert sorted(str(r[0]) for r in sql("SELECT id FROM async_jobs")) == sorted(kept)
    assert sql("SELECT count(*) FROM async_job_files") == [(0,)]

    code, out, _ = jobs("purge", "--before", "1h")
    assert code == 0 and out == "purged 0 jobs in 0 batches\n"
    code, _, err = jobs("purge", "--batch-size", "2")
    assert code == 2 and "one of the arguments --expired --before is required" in err


def test_purge_expired_deletes_only_expired_jobs(jobs: Jobs, sql: Sql) -> None:
    for _ in range(5):
        insert(sql, "completed", done="now() - interval '2 hours'")
    alive = insert(sql, "completed")

    code, out, _ = jobs("purge", "--expired", "--batch-size", "2")
    assert code == 0 and out == "purged 5 jobs in 3 batches\n"
    assert sql("SELECT id::text FROM async_jobs") == [(alive,)]


def _purge_slowly(config: Path, **kwargs: Any) -> subprocess.Popen[str]:
    command = ["jobs", "purge", "--before", "1h", "--batch-size", "2", "--pause", "0.3"]
    return subprocess.Popen(
        [PYTHON, "-m", "asyncgate", "--config", str(config), *command, "--json"],
        cwd=REPO,
        env=clean_environ(),
        text=True,
        **kwargs,
    )


def test_an_interrupted_purge_keeps_its_batches_and_exits_130(
    tmp_path: Path, database_url: str, sql: Sql
) -> None:
    rows = 64  # 32 batches 0.3 s apart: the interrupt comes long before the purge could end
    for _ in range(rows):
        insert(sql, "completed", created="now() - interval '2 hours'")
    process = _purge_slowly(
        config_for(tmp_path, database_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: sql("SELECT count(*) FROM async_jobs")[0][0] < rows, timeout=60)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True and "Traceback" not in err
    [(left,)] = sql("SELECT count(*) FROM async_jobs")
    assert 0 < report["deleted"] < rows
    # Every reported batch is gone; the batch under way at the interrupt went whole or not at all.
    assert left in (rows - report["deleted"], rows - 2 - report["deleted"])
    assert report["deleted"] == 2 * report["batches"]


def test_a_purge_on_a_terminal_shows_its_progress(
    tmp_path: Path, database_url: str, sql: Sql
) -> None:
    for _ in range(12):
        insert(sql, "failed", created="now() - interval '2 hours'")
    parent, child = pty.openpty()
    process = _purge_slowly(
        config_for(tmp_path, database_url), stdout=subprocess.PIPE, stderr=child
    )
    os.close(child)
    try:
        out, _ = process.communicate(timeout=60)
        seen = b""
        while True:
            try:
                chunk = os.read(parent, 4096)
            except OSError:  # the terminal's other side is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        process.kill()
        os.close(parent)
    assert process.returncode == 0
    assert json.loads(out)["deleted"] == 12
    assert re.search(rb"\rpurged \d+ jobs \(\d+/s\)", seen), seen
    assert seen.endswith(b"\r\n")  # the line is ended (the terminal turns \n into \r\n)


def test_views_show_summary_stuck_and_recent_failures(sql: Sql) -> None:
    lapsed = insert(sql, "processing", lease="now() - interval '1 minute'")
    insert(sql, "processing")
    waiting = insert(sql, "pending", created="now() - interval '20 minutes'")
    insert(sql, "pending")
    recent = insert(sql, "failed", kind="embedding", done="now() - interval '1 hour'")
    latest = insert(sql, "failed", done="now() - interval '1 minute'")
    insert(sql, "failed", done="now() - interval '2 days'")

    summary = sql("SELECT status, kind, jobs FROM async_jobs_summary ORDER BY status, kind")
    assert summary == [
        ("failed", "chat_completion", 2),
        ("failed", "embedding", 1),
        ("pending", "chat_completion", 2),
        ("processing", "chat_completion", 2),
    ]
    [(oldest, newest)] = sql(
        "SELECT oldest_created_at, newest_created_at FROM async_jobs_summary "
        "WHERE status = 'pending'"
    )
    assert (newest - oldest).total_seconds() > 19 * 60

    stuck = sql("SELECT id::text, status, reason, attempts FROM async_jobs_stuck ORDER BY status")
    assert stuck == [
        (waiting, "pending", "pending_too_long", 0),
        (lapsed, "processing", "lease_expired", 1),
    ]

    failures = sql("SELECT id::text, error_type, error_message FROM async_jobs_recent_failures")
    assert failures == [(latest, "upstream_error", "boom"), (recent, "upstream_error", "boom")]


def test_the_stuck_threshold_is_a_session_setting(database_url: str, sql: Sql) -> None:
    insert(sql, "pending", created="now() - interval '20 minutes'")
    with psycopg.connect(database_url, autocommit=True) as conn:
        count = "SELECT count(*) FROM async_jobs_stuck"
        assert conn.execute(count).fetchone() == (1,)
        conn.execute("SET asyncgate.stuck_pending = '30 minutes'")
        assert conn.execute(count).fetchone() == (0,)
        conn.execute("SET asyncgate.stuck_pending = '5 minutes'")
        assert conn.execute(count).fetchone() == (1,)


def test_0008_views_come_and_go(postgres_url: str) -> None:
    views = "SELECT relname FROM pg_class WHERE relkind = 'v' AND relname LIKE 'async_jobs_%%'"
    with new_database(postgres_url) as url:
        migrate.upgrade(url)
        assert len(query(url, views)) == 3
        migrate.downgrade(url, "0007")
        assert query(url, views) == []
        assert query(url, "SELECT version_num FROM alembic_version") == [("0007",)]
        migrate.upgrade(url)
        assert len(query(url, views)) == 3


def test_every_view_and_view_column_has_a_comment(sql: Sql) -> None:
    views = sql(
        "SELECT c.oid, c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'v'"
    )
    assert {v[1] for v in views} == {
        "async_jobs_summary",
        "async_jobs_stuck",
        "async_jobs_recent_failures",
    }
    for oid, name, comment in views:
        assert comment and len(comment) > 20, name
        columns = sql(
            "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0",
            oid,
        )
        assert columns and [c for c, text in columns if not text] == [], name
