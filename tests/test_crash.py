"""Workers that die or freeze mid-job: leases lapse, jobs move on, nothing is written twice."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.processes import Client, Processes, job_row, wait_row
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

CHAT = "/v1/async/chat/completions"


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def procs(tmp_path: Path, database_url: str, upstream: UpstreamThread) -> Iterator[Processes]:
    with Processes(tmp_path, database_url, upstream.url) as processes:
        yield processes


def test_job_of_killed_worker_is_reclaimed_and_completed(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    config = procs.config(worker={"lease_seconds": 2.0, "renew_seconds": 0.5})
    api, first = procs.start_many(["api", "worker"], config)
    client = Client(api.url, spec_checker)
    job_id = client.submit_ok(CHAT, chat("fake/delay-2"))

    wait_for(lambda: upstream.executions.get(job_id) == 1)
    running = job_row(database_url, job_id)
    assert running["status"] == "processing"
    assert first.owns(running["lease_owner"])
    first.kill()

    second = procs.start("worker", config)
    done = client.wait_terminal(CHAT, job_id, timeout=20)

    assert done["status"] == "completed", done
    assert job_row(database_url, job_id)["attempts"] == 2
    assert upstream.executions[job_id] == 2
    assert re.search(rf"job {job_id} .*completed", second.logs())


def test_paused_worker_cannot_overwrite_the_reclaimed_result(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    config = procs.config(worker={"lease_seconds": 1.5, "renew_seconds": 0.5})
    api, first = procs.start_many(["api", "worker"], config)
    client = Client(api.url, spec_checker)
    job_id = client.submit_ok(CHAT, chat("fake/delay-1"))

    wait_for(lambda: upstream.executions.get(job_id) == 1)
    first.pause()
    procs.start("worker", config)
    done = client.wait_terminal(CHAT, job_id, timeout=20)
    assert done["status"] == "completed", done
    written = job_row(database_url, job_id)
    assert upstream.executions[job_id] == 2
    # The upstream numbers its answers; the first went to the paused worker.
    assert written["result"]["id"] == "chatcmpl-000000000002"

    first.resume()
    first.wait_log(rf"job {job_id} lease lost")

    final = job_row(database_url, job_id)
    assert final["status"] == "completed"
    assert final["completed_at"] == written["completed_at"]
    assert final["result"] == written["result"]
    assert final["attempts"] == 2
    assert upstream.executions[job_id] == 2
    assert not re.search(rf"job {job_id} .*completed", first.logs())


def test_job_whose_workers_keep_dying_fails_after_max_attempts(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    config = procs.config(worker={"lease_seconds": 1.5, "renew_seconds": 0.5, "max_attempts": 2})
    api, *workers = procs.start_many(["api", "worker", "worker", "worker"], config)
    client = Client(api.url, spec_checker)
    job_id = client.submit_ok(CHAT, chat("fake/delay-20"))

    for attempt in (1, 2):
        row = wait_row(
            database_url,
            job_id,
            lambda r, n=attempt: r["status"] == "processing" and r["attempts"] == n,
            timeout=15,
        )
        wait_for(lambda n=attempt: upstream.executions.get(job_id) == n)
        holder = next(w for w in workers if w.owns(row["lease_owner"]))
        holder.kill()

    done = client.wait_terminal(CHAT, job_id, timeout=15)
    assert done["status"] == "failed", done
    assert done["status_code"] == 502
    assert done["error"]["error"]["type"] == "attempts_exhausted"
    assert "attempts" in done["error"]["error"]["message"]
    assert job_row(database_url, job_id)["attempts"] == 2
    assert upstream.executions[job_id] == 2


def test_live_worker_keeps_its_lease_on_a_job_longer_than_the_lease(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    config = procs.config(worker={"lease_seconds": 1.5, "renew_seconds": 0.3})
    api, *workers = procs.start_many(["api", "worker", "worker"], config)
    client = Client(api.url, spec_checker)
    job_id = client.submit_ok(CHAT, chat("fake/delay-3"))

    done = client.wait_terminal(CHAT, job_id, timeout=20)

    assert done["status"] == "completed", done
    assert upstream.executions[job_id] == upstream.successes[job_id] == 1
    assert job_row(database_url, job_id)["attempts"] == 1
    for worker in workers:
        assert "lease" not in worker.logs()
