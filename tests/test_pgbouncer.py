"""The gateway behind a real PgBouncer in transaction mode: ``database.url`` leads through it,
``database.listen_url`` straight to PostgreSQL.

Each test starts ``/usr/sbin/pgbouncer`` with a configuration of its own. Few server connections
serve many client ones, so consecutive statements of one pooled connection run on different
server connections, and the server connections' time zone is not UTC: a prepared statement or
a session setting that outlived its transaction would show.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from asyncgate.config import Secret
from asyncgate.models.database import Database
from asyncgate.models.events import APPLICATION_NAME, JobEvents
from tests.conftest import Gateway, make_settings, wait_for
from tests.helpers import (
    CHAT,
    EMBEDDINGS,
    PYTHON,
    REPO,
    assert_error,
    chat,
    clean_environ,
    create_key,
    disable_key,
    for_job,
    new_database,
    parse_time,
    run,
    submit_ok,
)
from tests.launch import free_port
from tests.receiver import Receiver
from tests.spec_check import SpecChecker
from tests.test_webhooks import FAST
from tests.upstream import UpstreamThread

PGBOUNCER = Path("/usr/sbin/pgbouncer")
SERVER_TIME_ZONE = "America/New_York"
"""The time zone PgBouncer's server connections start in (not UTC, so that a lost SET shows)."""
SERVER_CONNECTIONS = 2
"""Server connections per database and user: fewer than the gateway's pooled connections."""
JOBS = 30
"""Jobs per run: each pooled statement runs more often than psycopg's prepare threshold (5)."""

Sql = Callable[..., list[tuple[Any, ...]]]


@dataclass
class Bouncer:
    """A running PgBouncer in front of one PostgreSQL server."""

    process: subprocess.Popen[bytes]
    port: int
    user: str
    log: Path

    def url(self, database: str) -> str:
        """A URL of ``database`` through this PgBouncer."""
        return psycopg.conninfo.make_conninfo(
            "", host="127.0.0.1", port=str(self.port), user=self.user, dbname=database
        )


def tcp_server(postgres_url: str) -> dict[str, str]:
    """``host``, ``port``, ``user`` and ``password`` of ``postgres_url``; skips the test when it
    names a Unix socket (the embedded PostgreSQL listens on one only)."""
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    host = str(info.get("host") or "")
    if not host or host.startswith("/"):
        pytest.skip("PgBouncer is tested against a PostgreSQL on TCP; this one has a socket only")
    return {
        "host": host,
        "port": str(info.get("port") or 5432),
        "user": str(info.get("user") or pwd.getpwuid(os.getuid()).pw_name),
        "password": str(info.get("password") or ""),
    }


def as_url(conninfo: str) -> str:
    """``conninfo`` (host, port, user, password, database) as a ``postgresql://`` URL."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    password = f":{info['password']}" if info.get("password") else ""
    return (
        f"postgresql://{info.get('user', '')}{password}@{info['host']}:{info.get('port', 5432)}"
        f"/{info['dbname']}"
    )


@pytest.fixture
def bouncer(tmp_path: Path, postgres_url: str) -> Iterator[Bouncer]:
    """PgBouncer in transaction mode on a free port, for every database of ``postgres_url``."""
    if not PGBOUNCER.exists():
        pytest.skip(f"{PGBOUNCER} is not installed (Debian package pgbouncer)")
    server = tcp_server(postgres_url)
    port = free_port()
    password = f" password={server['password']}" if server["password"] else ""
    (tmp_path / "users.txt").write_text(f'"{server["user"]}" ""\n')
    config = tmp_path / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={server['host']} port={server['port']} user={server['user']}{password} "
        f"timezone={SERVER_TIME_ZONE}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "pool_mode = transaction\n"
        "auth_type = trust\n"
        f"auth_file = {tmp_path / 'users.txt'}\n"
        f"default_pool_size = {SERVER_CONNECTIONS}\n"
        "max_client_conn = 200\n"
    )
    # PgBouncer refuses to run as root; it reads its files before it changes user.
    run_as = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = tmp_path / "pgbouncer.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(PGBOUNCER), *run_as, str(config)], stdout=output, stderr=subprocess.STDOUT
        )
    running = Bouncer(process, port, server["user"], log)
    try:
        wait_for(lambda: _answers(running) or process.poll() is not None, timeout=10)
        assert process.poll() is None, f"pgbouncer exited: {log.read_text()}"
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(bouncer: Bouncer) -> bool:
    try:
        with psycopg.connect(bouncer.url("postgres"), connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture
def pooled_url(bouncer: Bouncer, database_url: str) -> str:
    """The test database through PgBouncer."""
    return bouncer.url(str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]))


@pytest.fixture
def bounced_gateway_factory(
    pooled_url: str, database_url: str, upstream: UpstreamThread, spec_checker: SpecChecker
) -> Iterator[Callable[..., Gateway]]:
    """Gateways (API and worker in one) whose pool goes through PgBouncer and whose listening
    connections go straight to PostgreSQL."""
    started: list[Gateway] = []

    def start(**sections: Any) -> Gateway:
        database = {"listen_url": Secret(as_url(database_url)), **sections.pop("database", {})}
        settings = make_settings(pooled_url, upstream.url, database=database, **sections)
        gateway = Gateway(settings, pooled_url, spec_checker).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def services_db(gateway: Gateway) -> Database:
    db = gateway.server.lifespan.state["services"].db
    assert isinstance(db, Database)
    return db


def events_of(gateway: Gateway) -> JobEvents:
    events = gateway.server.lifespan.state["services"].events
    assert isinstance(events, JobEvents)
    return events


def test_pooled_statements_are_never_prepared_and_speak_utc(
    pooled_url: str, database_url: str
) -> None:
    with psycopg.connect(pooled_url, autocommit=True) as conn:
        [(zone,)] = conn.execute("SHOW TimeZone").fetchall()
    assert zone == SERVER_TIME_ZONE  # what a connection that sets nothing gets

    async def many_queries() -> tuple[set[str], set[int]]:
        db = Database(pooled_url, listen_url=database_url, pool_size=4)
        assert db.prepare_threshold is None
        assert Database(database_url).prepare_threshold is not None
        await db.open()
        zones: set[str] = set()
        values: set[int] = set()
        try:
            for i in range(10 * JOBS):
                async with db.connection() as conn:
                    cur = await conn.execute(
                        "SELECT current_setting('TimeZone'), %s::int, now()", (i,)
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    zones.add(row[0])
                    values.add(row[1])
                    assert row[2].utcoffset().total_seconds() == 0
        finally:
            await db.close()
        return zones, values

    zones, values = run(many_queries)
    assert zones == {"UTC"}
    assert values == set(range(10 * JOBS))


def test_submit_worker_poll_long_poll_and_cancel_through_pgbouncer(
    bounced_gateway_factory: Callable[..., Gateway], upstream: UpstreamThread, sql: Sql
) -> None:
    # Renewals far apart: only the done notification (over listen_url) stops a cancelled job.
    gateway = bounced_gateway_factory(worker={"lease_seconds": 30.0, "renew_seconds": 10.0})
    db = services_db(gateway)
    assert db.pooled and db.prepare_threshold is None
    wait_for(lambda: events_of(gateway).connected.is_set())

    ids = [submit_ok(gateway, CHAT, json=chat(text=f"job {i}")) for i in range(JOBS)]
    for job_id in ids:
        body = gateway.wait_terminal(CHAT, job_id)
        assert body["status"] == "completed", body
        assert body["result"]["object"] == "chat.completion"
        parse_time(body["created_at"])  # UTC, written with Z
    embedding = submit_ok(gateway, EMBEDDINGS, json={"model": "fake/ok", "input": "x"})
    assert gateway.wait_terminal(EMBEDDINGS, embedding)["status"] == "completed"

    # Long-polls are woken by the completion, heard on the direct listening connection.
    for _ in range(5):
        job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-0.3"))
        started = time.monotonic()
        response = gateway.poll(CHAT, job_id, headers={"Prefer": "wait=20"})
        took = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"
        assert took < 5
    assert events_of(gateway).waiting == 0

    # A running job is cancelled at its worker, which aborts the upstream request at once.
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-20"))
    wait_for(lambda: for_job(upstream, job_id))
    cancelled_at = time.monotonic()
    response = gateway.client.post(f"{gateway.url}{CHAT}/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    [request] = for_job(upstream, job_id)
    wait_for(lambda: request.closed_at is not None, timeout=5)
    assert request.closed_at is not None and request.closed_at - cancelled_at < 1.5
    assert sql("SELECT status, lease_owner FROM async_jobs WHERE id = %s", job_id) == [
        ("cancelled", None)
    ]

    listening = sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = "
        "current_database()",
        APPLICATION_NAME,
    )
    assert listening == [(1,)]


def test_virtual_keys_through_pgbouncer(
    bounced_gateway_factory: Callable[..., Gateway], pooled_url: str
) -> None:
    gateway = bounced_gateway_factory(auth={"required": True})
    keys = [create_key(pooled_url, f"key-{i}") for i in range(8)]
    for round_ in range(4):
        for key in keys:
            job_id = submit_ok(gateway, CHAT, json=chat(), headers={"x-bf-vk": key})
            body = gateway.wait_terminal(CHAT, job_id, headers={"x-bf-vk": key})
            assert body["status"] == "completed", (round_, body)
    assert_error(gateway.submit(CHAT, json=chat()), 401)
    assert disable_key(pooled_url, "key-0")
    error = assert_error(gateway.submit(CHAT, json=chat(), headers={"x-bf-vk": keys[0]}), 400)
    assert error["error"]["message"] == "invalid virtual key"
    assert submit_ok(gateway, CHAT, json=chat(), headers={"x-bf-vk": keys[1]})


def test_migrations_and_keys_commands_through_pgbouncer_leave_no_lock(
    bouncer: Bouncer, postgres_url: str, tmp_path: Path
) -> None:
    """``migrate`` takes its advisory lock on the direct URL: through a transaction-mode
    pooler, the unlock could run on another server connection and the lock outlive the run."""
    with new_database(postgres_url) as direct_url:
        name = str(psycopg.conninfo.conninfo_to_dict(direct_url)["dbname"])
        env = clean_environ(
            ASYNCGATE_DATABASE_URL=bouncer.url(name),
            ASYNCGATE_DATABASE_LISTEN_URL=as_url(direct_url),
        )
        outputs = {}
        for command in ("migrate", "keys create ops", "keys list", "migrate --revision head"):
            done = subprocess.run(
                [PYTHON, "-m", "asyncgate", *command.split()],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            outputs[command] = done.stdout
        assert outputs["keys create ops"].startswith("sk-")
        assert "ops" in outputs["keys list"]
        with psycopg.connect(direct_url, autocommit=True) as conn:
            locks = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = %s",
                (name,),
            ).fetchall()
            tables = conn.execute("SELECT to_regclass('async_jobs') IS NOT NULL").fetchall()
        assert locks == [(0,)]
        assert tables == [(True,)]


def test_listen_url_without_url_is_a_configuration_error(tmp_path: Path) -> None:
    env = clean_environ(ASYNCGATE_DATABASE_LISTEN_URL=f"postgresql://db/{uuid.uuid4().hex}")
    done = subprocess.run(
        [PYTHON, "-m", "asyncgate", "migrate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "database.listen_url needs database.url" in done.stderr


def test_webhooks_are_claimed_and_delivered_through_pgbouncer(
    bounced_gateway_factory: Callable[..., Gateway], database_url: str
) -> None:
    admin = create_key(database_url, "admin", admin=True)
    gateway = bounced_gateway_factory(webhooks=FAST)
    with Receiver(answers=[503]) as receiver:
        created = gateway.client.post(
            f"{gateway.url}/api/webhooks/endpoints",
            json={"name": "hook", "url": receiver.url},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert created.status_code == 201, created.text
        jobs = [
            gateway.submit(CHAT, json=chat(), headers={"x-bf-async-webhook": "hook"}).json()["id"]
            for _ in range(12)
        ]
        wait_for(lambda: {d.json["data"]["job_id"] for d in receiver.deliveries} >= set(jobs))
        wait_for(lambda: len(receiver.deliveries) == 13)  # one refused first, then retried
        for delivery in receiver.deliveries:
            Webhook(created.json()["secret"]).verify(delivery.body, delivery.headers)
