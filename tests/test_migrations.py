"""The migrations against a real PostgreSQL: up, down, up again, and the schema they leave."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CheckConstraint, create_engine

from asyncgate.models import migrate
from asyncgate.models.tables import metadata
from tests.helpers import new_database

Sql = Callable[..., list[tuple[Any, ...]]]
OUR_TABLES = {
    "virtual_keys",
    "async_jobs",
    "async_job_files",
    "async_webhook_endpoints",
    "async_webhook_deliveries",
    "async_webhook_attempts",
}


@pytest.fixture
def empty_database(postgres_url: str) -> Iterator[str]:
    """A new database with no schema at all."""
    with new_database(postgres_url) as url:
        yield url


def query(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement, params or None).fetchall()


def relations(url: str) -> set[str]:
    """Every table, index, sequence and view in the public schema."""
    rows = query(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public'",
    )
    return {row[0] for row in rows}


def head() -> str:
    revision = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert revision is not None
    return revision


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    assert relations(empty_database) == set()
    migrate.upgrade(empty_database)
    assert OUR_TABLES <= relations(empty_database)
    assert query(empty_database, "SELECT version_num FROM alembic_version") == [(head(),)]

    migrate.downgrade(empty_database, "base")
    assert relations(empty_database) <= {"alembic_version", "alembic_version_pkc"}
    assert query(empty_database, "SELECT count(*) FROM alembic_version") == [(0,)]

    migrate.upgrade(empty_database)
    assert OUR_TABLES <= relations(empty_database)
    query(
        empty_database,
        "INSERT INTO virtual_keys (name, key_hash) VALUES ('k', sha256('k')) RETURNING id",
    )
    migrate.upgrade(empty_database)
    assert query(empty_database, "SELECT count(*) FROM virtual_keys") == [(1,)]


def test_0003_keeps_a_requeued_jobs_owner_and_forbids_a_pending_lease(
    empty_database: str,
) -> None:
    insert = (
        "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds, lease_owner, "
        "lease_expires_at) VALUES (gen_random_uuid(), 'embedding', 'p', 'p/m', '{}', 60, %s, %s)"
    )
    migrate.upgrade(empty_database, "0002")
    query(empty_database, insert + " RETURNING id", "old-worker", None)
    query(empty_database, insert + " RETURNING id", None, "2026-01-01T00:00:00Z")

    migrate.upgrade(empty_database)
    # A pending job keeps the name of its last owner, and loses any lease it still had.
    assert query(empty_database, "SELECT lease_owner, lease_expires_at FROM async_jobs") in (
        [("old-worker", None), (None, None)],
        [(None, None), ("old-worker", None)],
    )
    query(empty_database, insert + " RETURNING id", "requeued-owner", None)
    with pytest.raises(psycopg.errors.CheckViolation):
        query(empty_database, insert, "w", "2026-01-01T00:00:00Z")

    migrate.downgrade(empty_database, "0002")
    assert query(
        empty_database, "SELECT count(*) FROM async_jobs WHERE lease_owner IS NOT NULL"
    ) == [(0,)]
    query(empty_database, insert + " RETURNING id", None, "2026-01-01T00:00:00Z")


def test_0004_allows_cancelled_jobs_and_downgrading_refuses_while_they_exist(
    empty_database: str,
) -> None:
    cancelled = (
        "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds, status, "
        "status_code, error, completed_at, expires_at) VALUES (gen_random_uuid(), 'embedding', "
        "'p', 'p/m', '{}', 60, 'cancelled', 499, %s::jsonb, now(), now() + interval '1 minute') "
        "RETURNING id"
    )
    migrate.upgrade(empty_database, "0003")
    with pytest.raises(psycopg.errors.CheckViolation):
        query(empty_database, cancelled, "{}")
    migrate.upgrade(empty_database, "0004")
    with pytest.raises(psycopg.errors.CheckViolation):
        query(empty_database, cancelled, None)  # a cancelled job says why
    [(job_id,)] = query(empty_database, cancelled, "{}")
    with pytest.raises(Exception, match="cancelled jobs exist"):
        migrate.downgrade(empty_database, "0003")
    assert query(empty_database, "SELECT version_num FROM alembic_version") == [("0004",)]
    query(empty_database, "DELETE FROM async_jobs WHERE id = %s RETURNING id", job_id)
    migrate.downgrade(empty_database, "0003")
    assert query(empty_database, "SELECT version_num FROM alembic_version") == [("0003",)]


def test_concurrent_upgrades_are_serialised(empty_database: str) -> None:
    errors: list[BaseException] = []

    def upgrade() -> None:
        try:
            migrate.upgrade(empty_database)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert query(empty_database, "SELECT version_num FROM alembic_version") == [(head(),)]
    assert OUR_TABLES <= relations(empty_database)


def test_the_head_read_from_the_scripts_is_alembics(empty_database: str) -> None:
    assert migrate.head_revision() == head()
    assert migrate.current_revision(empty_database) is None
    migrate.upgrade(empty_database, "0002")
    assert migrate.current_revision(empty_database) == "0002"


def test_a_database_at_the_head_is_not_migrated_again(empty_database: str) -> None:
    migrate.upgrade(empty_database)
    # A process holding the migration lock would block a migration: an up-to-date database
    # must be recognised without taking it.
    with psycopg.connect(empty_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrate._LOCK_ID,))
        done = threading.Event()
        thread = threading.Thread(target=lambda: (migrate.upgrade(empty_database), done.set()))
        thread.start()
        thread.join(10)
        assert done.is_set()
        holder.execute("SELECT pg_advisory_unlock(%s)", (migrate._LOCK_ID,))


def test_schema_matches_the_table_definitions(database_url: str) -> None:
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(database_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()

    # alembic does not compare CHECK constraints or partial-index predicates: do it here.
    for table in metadata.sorted_tables:
        expected = {
            str(c.name)
            for c in table.constraints
            if isinstance(c, CheckConstraint) and c.name is not None
        }
        rows = query(
            database_url,
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
            table.name,
        )
        assert {row[0] for row in rows} == expected, table.name
        for index in table.indexes:
            where = index.dialect_options["postgresql"]["where"]
            [(predicate,)] = query(
                database_url,
                "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i "
                "WHERE i.indexrelid = %s::regclass",
                index.name,
            )
            if where is None:
                assert predicate is None, index.name
            else:
                normalised = predicate.replace("::text", "").removeprefix("(").removesuffix(")")
                assert normalised == str(where), index.name


def test_every_table_and_column_has_a_comment(sql: Sql) -> None:
    tables = sql(
        "SELECT c.oid, c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'alembic_version'"
    )
    assert {row[1] for row in tables} == OUR_TABLES
    for oid, table, comment in tables:
        assert comment and len(comment) > 10, table
        columns = sql(
            "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            oid,
        )
        assert columns, table
        missing = [name for name, text in columns if not text]
        assert missing == [], f"{table}: columns without a comment: {missing}"


BAD_ROWS = {
    "unknown-status": "INSERT INTO async_jobs (id, kind, status, provider, model, request, "
    "ttl_seconds) VALUES (gen_random_uuid(), 'chat_completion', 'running', 'p', 'p/m', '{}', 60)",
    "unknown-kind": "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds) "
    "VALUES (gen_random_uuid(), 'video', 'p', 'p/m', '{}', 60)",
    "zero-ttl": "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds) "
    "VALUES (gen_random_uuid(), 'chat_completion', 'p', 'p/m', '{}', 0)",
    "processing-without-lease": "INSERT INTO async_jobs (id, kind, status, provider, model, "
    "request, ttl_seconds) VALUES (gen_random_uuid(), 'embedding', 'processing', 'p', 'p/m', "
    "'{}', 60)",
    "completed-without-result": "INSERT INTO async_jobs (id, kind, status, provider, model, "
    "request, ttl_seconds, completed_at, expires_at) VALUES (gen_random_uuid(), 'embedding', "
    "'completed', 'p', 'p/m', '{}', 60, now(), now())",
    "failed-without-error": "INSERT INTO async_jobs (id, kind, status, provider, model, request, "
    "ttl_seconds, completed_at, expires_at) VALUES (gen_random_uuid(), 'embedding', 'failed', "
    "'p', 'p/m', '{}', 60, now(), now())",
    "negative-attempts": "INSERT INTO async_jobs (id, kind, provider, model, request, "
    "ttl_seconds, attempts) VALUES (gen_random_uuid(), 'speech', 'p', 'p/m', '{}', 60, -1)",
    "pending-with-lease": "INSERT INTO async_jobs (id, kind, provider, model, request, "
    "ttl_seconds, lease_owner, lease_expires_at) VALUES (gen_random_uuid(), 'embedding', 'p', "
    "'p/m', '{}', 60, 'w', now())",
    "short-key-hash": "INSERT INTO virtual_keys (name, key_hash) VALUES ('k', '\\x0102')",
    "empty-idempotency-key": "INSERT INTO async_jobs (id, kind, provider, model, request, "
    "ttl_seconds, idempotency_key, request_hash) VALUES (gen_random_uuid(), 'embedding', 'p', "
    "'p/m', '{}', 60, '', sha256('x'))",
    "long-idempotency-key": "INSERT INTO async_jobs (id, kind, provider, model, request, "
    "ttl_seconds, idempotency_key, request_hash) VALUES (gen_random_uuid(), 'embedding', 'p', "
    "'p/m', '{}', 60, repeat('k', 256), sha256('x'))",
    "short-request-hash": "INSERT INTO async_jobs (id, kind, provider, model, request, "
    "ttl_seconds, idempotency_key, request_hash) VALUES (gen_random_uuid(), 'embedding', 'p', "
    "'p/m', '{}', 60, 'k', '\\x0102')",
    "idempotency-key-without-hash": "INSERT INTO async_jobs (id, kind, provider, model, "
    "request, ttl_seconds, idempotency_key) VALUES (gen_random_uuid(), 'embedding', 'p', 'p/m', "
    "'{}', 60, 'k')",
    "malformed-traceparent": "INSERT INTO async_jobs (id, kind, provider, model, request, "
    "ttl_seconds, traceparent) VALUES (gen_random_uuid(), 'embedding', 'p', 'p/m', '{}', 60, "
    "'00-abc-def-01')",
    "tracestate-without-traceparent": "INSERT INTO async_jobs (id, kind, provider, model, "
    "request, ttl_seconds, tracestate) VALUES (gen_random_uuid(), 'embedding', 'p', 'p/m', "
    "'{}', 60, 'vendor=1')",
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_check_constraints_reject_bad_rows(database_url: str, case: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(BAD_ROWS[case])
        assert conn.execute("SELECT count(*) FROM async_jobs").fetchone() == (0,)


def test_files_go_with_their_job(sql: Sql) -> None:
    [(job_id,)] = sql(
        "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds) "
        "VALUES (gen_random_uuid(), 'transcription', 'p', 'p/m', '{}', 60) RETURNING id"
    )
    sql(
        "INSERT INTO async_job_files (job_id, position, field, data) VALUES (%s, 0, 'file', 'x')",
        job_id,
    )
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        sql(
            "INSERT INTO async_job_files (job_id, position, field, data) "
            "VALUES (gen_random_uuid(), 0, 'file', 'x')"
        )
    sql("DELETE FROM async_jobs WHERE id = %s", job_id)
    assert sql("SELECT count(*) FROM async_job_files") == [(0,)]


def test_rerank_and_ocr_kinds_migrate_up_and_down(empty_database: str) -> None:
    insert = (
        "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds) "
        "VALUES (gen_random_uuid(), %s, 'p', 'p/m', '{}', 60) RETURNING id"
    )
    migrate.upgrade(empty_database, "0001")
    for kind in ("rerank", "ocr"):
        with pytest.raises(psycopg.errors.CheckViolation):
            query(empty_database, insert, kind)

    migrate.upgrade(empty_database, "0002")
    query(empty_database, insert, "rerank")
    query(empty_database, insert, "ocr")
    with pytest.raises(Exception, match="rerank or ocr jobs exist"):
        migrate.downgrade(empty_database, "0001")
    assert query(empty_database, "SELECT version_num FROM alembic_version") == [("0002",)]

    query(empty_database, "DELETE FROM async_jobs WHERE kind IN ('rerank', 'ocr') RETURNING id")
    migrate.downgrade(empty_database, "0001")
    with pytest.raises(psycopg.errors.CheckViolation):
        query(empty_database, insert, "ocr")
    query(empty_database, insert, "chat_completion")


def test_0005_admin_keys_list_indexes_and_idempotency(empty_database: str) -> None:
    insert = (
        "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds, owner_key_id, "
        "idempotency_key, request_hash) VALUES (gen_random_uuid(), 'embedding', 'p', 'p/m', "
        "'{}', 60, %s, %s, sha256('r')) RETURNING id"
    )
    migrate.upgrade(empty_database, "0004")
    query(
        empty_database,
        "INSERT INTO virtual_keys (name, key_hash) VALUES ('old', sha256('o')) RETURNING id",
    )
    migrate.upgrade(empty_database, "0005")
    # Keys made before 0005 are not admins.
    assert query(empty_database, "SELECT name, is_admin FROM virtual_keys") == [("old", False)]
    [(key_id,)] = query(empty_database, "SELECT id FROM virtual_keys")
    query(empty_database, insert, None, "same")
    query(empty_database, insert, key_id, "same")  # another owner: no conflict
    with pytest.raises(psycopg.errors.UniqueViolation):
        query(empty_database, insert, None, "same")
    with pytest.raises(psycopg.errors.UniqueViolation):
        query(empty_database, insert, key_id, "same")
    comments = query(
        empty_database,
        "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
        "WHERE c.relname LIKE 'async_jobs_%%idx' AND c.relname IN "
        "('async_jobs_owner_list_idx', 'async_jobs_list_idx', 'async_jobs_idempotency_idx')",
    )
    assert len(comments) == 3 and all(comment for _, comment in comments), comments

    migrate.downgrade(empty_database, "0004")
    columns = {
        row[0]
        for row in query(
            empty_database,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name IN ('async_jobs', 'virtual_keys')",
        )
    }
    assert not columns & {"is_admin", "idempotency_key", "request_hash"}
    assert not relations(empty_database) & {"async_jobs_list_idx", "async_jobs_idempotency_idx"}
    assert query(empty_database, "SELECT count(*) FROM async_jobs") == [(2,)]


def test_0010_and_0012_set_the_job_tables_storage_parameters_as_declared(
    empty_database: str,
) -> None:
    from asyncgate.models.tables import JOBS_STORAGE

    def options() -> dict[str, str]:
        rows = query(empty_database, "SELECT reloptions FROM pg_class WHERE relname = 'async_jobs'")
        return dict(option.split("=", 1) for option in rows[0][0] or [])

    migrate.upgrade(empty_database)
    assert options() == JOBS_STORAGE
    migrate.downgrade(empty_database, "0011")
    assert options() == {k: v for k, v in JOBS_STORAGE.items() if k != "fillfactor"}
    migrate.downgrade(empty_database, "0009")
    assert options() == {}
