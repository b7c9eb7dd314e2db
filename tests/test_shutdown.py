"""SIGTERM: running jobs get their grace period, the rest are handed back, exit code 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.processes import Client, Processes, job_row
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

CHAT = "/v1/async/chat/completions"


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def procs(tmp_path: Path, database_url: str, upstream: UpstreamThread) -> Iterator[Processes]:
    with Processes(tmp_path, database_url, upstream.url) as processes:
        yield processes


def assert_handed_back(database_url: str, job_id: str) -> None:
    """Pending again, lease cleared, and the interrupted run not counted as an attempt."""
    row = job_row(database_url, job_id)
    assert row["status"] == "pending", row
    assert row["attempts"] == 0
    assert row["lease_owner"] is None
    assert row["lease_expires_at"] is None


def test_sigterm_lets_a_short_job_finish(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    config = procs.config(worker={"shutdown_grace_seconds": 5.0})
    api, worker = procs.start_many(["api", "worker"], config)
    client = Client(api.url, spec_checker)
    job_id = client.submit_ok(CHAT, chat("fake/delay-1"))
    wait_for(lambda: upstream.executions.get(job_id) == 1)

    assert worker.terminate() == 0

    row = job_row(database_url, job_id)
    assert row["status"] == "completed", row
    assert row["attempts"] == 1
    assert upstream.executions[job_id] == 1
    assert client.poll(CHAT, job_id).json()["status"] == "completed"
    assert "waiting for 1 running job(s)" in worker.logs()


def test_sigterm_hands_back_a_job_that_outlasts_the_grace_period(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    config = procs.config(worker={"shutdown_grace_seconds": 0.5})
    api, worker = procs.start_many(["api", "worker"], config)
    client = Client(api.url, spec_checker)
    job_id = client.submit_ok(CHAT, chat("fake/delay-3"))
    wait_for(lambda: upstream.executions.get(job_id) == 1)

    assert worker.terminate(timeout=10) == 0

    assert_handed_back(database_url, job_id)
    assert f"job {job_id} handed back to pending" in worker.logs()
    procs.start("worker", config)
    done = client.wait_terminal(CHAT, job_id, timeout=20)
    assert done["status"] == "completed", done
    assert job_row(database_url, job_id)["attempts"] == 1
    assert upstream.executions[job_id] == 2


def test_serve_finishes_short_jobs_and_hands_back_long_ones_on_sigterm(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    serve = procs.start("serve", worker={"shutdown_grace_seconds": 2.0})
    client = Client(serve.url, spec_checker)
    short_id = client.submit_ok(CHAT, chat("fake/delay-0.3"))
    long_id = client.submit_ok(CHAT, chat("fake/delay-10"))
    wait_for(lambda: upstream.executions.get(short_id) == upstream.executions.get(long_id) == 1)
    client.close()

    assert serve.terminate(timeout=15) == 0

    assert job_row(database_url, short_id)["status"] == "completed"
    assert_handed_back(database_url, long_id)
    assert f"job {long_id} handed back to pending" in serve.logs()


def test_api_exits_cleanly_on_sigterm_and_keeps_what_it_accepted(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    api = procs.start("api")
    client = Client(api.url, spec_checker)
    job_id = client.submit_ok(CHAT, chat("fake/ok"))
    client.close()

    assert api.terminate(timeout=15) == 0

    row = job_row(database_url, job_id)
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert upstream.executions.get(job_id) is None


def test_api_processes_share_the_port_and_exit_cleanly_on_sigterm(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    api = procs.start("api", server={"processes": 2})
    wait_for(lambda: api.logs().count("Application startup complete") == 2)
    client = Client(api.url, spec_checker)
    job_ids = [client.submit_ok(CHAT, chat("fake/ok")) for _ in range(6)]
    assert all(client.poll(CHAT, job_id).status_code == 202 for job_id in job_ids)
    client.close()

    assert api.terminate(timeout=20) == 0

    assert all(job_row(database_url, job_id)["status"] == "pending" for job_id in job_ids)
