"""Shared fixtures: a real PostgreSQL, a fresh migrated database per test, a real upstream on
loopback and a real gateway (uvicorn on a free port) whose every answer is checked against
the spec by openapi-core.

PostgreSQL: the server named by ``ASYNCGATE_TEST_DATABASE_URL`` (a URL whose user may create
databases), else an embedded server started for the session.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import uvicorn

from asyncgate.app import create_app
from asyncgate.config import ProviderConfig, Secret, Settings
from asyncgate.embedded import EmbeddedPostgres
from asyncgate.resources import spec_dir
from tests.launch import (
    create_database,
    create_migrated_database,
    drop_database,
    free_port,
    poll_until,
    with_database,
)
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

UPSTREAM_KEY = "sk-upstream-secret"
TERMINAL = ("completed", "failed", "cancelled")


__all__ = [
    "TERMINAL",
    "UPSTREAM_KEY",
    "Gateway",
    "free_port",
    "make_settings",
    "wait_for",
    "with_database",
]


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    value = poll_until(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"condition not met within {timeout}s")
    return value


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """An admin URL of a running PostgreSQL server."""
    external = os.environ.get("ASYNCGATE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="asyncgate-pg-") as tmp:
        embedded = EmbeddedPostgres(Path(tmp) / "pgdata")
        try:
            yield embedded.start()
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
def template_database(postgres_url: str) -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    name = f"asyncgate_template_{os.getpid()}"
    drop_database(postgres_url, name)
    create_migrated_database(postgres_url, name)
    yield name
    drop_database(postgres_url, name)


@pytest.fixture
def database_url(postgres_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = f"asyncgate_test_{uuid.uuid4().hex[:12]}"
    yield create_database(postgres_url, name, template=template_database)
    drop_database(postgres_url, name)


@pytest.fixture
def sql(database_url: str) -> Callable[..., list[tuple[Any, ...]]]:
    """Run a statement against the test database and return its rows (for assertions)."""

    def run(statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            cur = conn.execute(statement, params or None)
            return cur.fetchall() if cur.description else []

    return run


@pytest.fixture
def upstream() -> Iterator[UpstreamThread]:
    with UpstreamThread(expected_api_key=UPSTREAM_KEY) as up:
        yield up


def make_settings(database_url: str, upstream_url: str, **sections: Any) -> Settings:
    """Settings for tests: providers ``fake`` and ``backup`` on the test upstream, fast timers."""
    providers = {
        name: ProviderConfig(
            name=name, base_url=upstream_url, api_key=Secret(UPSTREAM_KEY), timeout=5.0
        )
        for name in ("fake", "backup")
    }
    settings = Settings(providers=providers).replace(
        database={"url": Secret(database_url), "pool_size": 5},
        worker={
            "poll_seconds": 0.2,
            "lease_seconds": 4.0,
            "renew_seconds": 1.0,
            "retry_base_seconds": 0.01,
            "retry_max_seconds": 0.2,
            "shutdown_grace_seconds": 2.0,
        },
        auth={"key_cache_seconds": 0.0},
        sweeper={"interval_seconds": 3600.0},
    )
    return settings.replace(**sections) if sections else settings


class Gateway:
    """A gateway served by uvicorn in a thread; ``client`` checks every answer against the spec."""

    def __init__(self, settings: Settings, database_url: str, checker: SpecChecker) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, database_url, run_worker=True)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            loop="asyncio",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.client = checker.session(self.url)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self) -> Gateway:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), timeout=20)
        assert self.server.started, "gateway failed to start"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.client.close()

    # Conveniences for the common submit -> poll flow.

    def submit(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.client.post(f"{self.url}{path}", json=json, **kwargs)

    def poll(self, path: str, job_id: str, **kwargs: Any) -> requests.Response:
        return self.client.get(f"{self.url}{path}/{job_id}", **kwargs)

    def wait_terminal(self, path: str, job_id: str, timeout: float = 20.0, **kwargs: Any) -> dict:
        def done() -> dict | None:
            response = self.poll(path, job_id, **kwargs)
            assert response.status_code in (200, 202), response.text
            body = response.json()
            return body if body["status"] in TERMINAL else None

        return wait_for(done, timeout=timeout, interval=0.05)


@pytest.fixture(scope="session")
def spec_checker() -> SpecChecker:
    return SpecChecker(spec_dir() / "openapi.yaml")


@pytest.fixture
def gateway_factory(
    database_url: str, upstream: UpstreamThread, spec_checker: SpecChecker
) -> Iterator[Callable[..., Gateway]]:
    """Start gateways with settings overridden per section, e.g. ``auth={"required": True}``."""
    started: list[Gateway] = []

    def start(**sections: Any) -> Gateway:
        settings = make_settings(database_url, upstream.url, **sections)
        gateway = Gateway(settings, database_url, spec_checker).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    """A gateway on default test settings."""
    return gateway_factory()
