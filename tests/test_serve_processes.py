"""``serve`` on several processes: API processes sharing the port and a worker process of its
own, all children of one parent that restarts a dead worker and takes every child with it."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import wait_for
from tests.processes import WORKER_STARTED, Client, GatewayProcess, Processes, job_row
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

CHAT = "/v1/async/chat/completions"


def chat(model: str = "fake/ok") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def procs(tmp_path: Path, database_url: str, upstream: UpstreamThread) -> Iterator[Processes]:
    with Processes(tmp_path, database_url, upstream.url) as processes:
        yield processes


def worker_pids(process: GatewayProcess) -> list[int]:
    """The pid in each ``worker host:pid:suffix started`` line, in order."""
    return [int(owner.split(":")[1]) for owner in WORKER_STARTED.findall(process.logs())]


def children(process: GatewayProcess) -> list[psutil.Process]:
    """The gateway's own children (multiprocessing's resource tracker left out)."""
    found = psutil.Process(process.pid).children()
    return [child for child in found if "resource_tracker" not in " ".join(child.cmdline())]


def test_serve_runs_api_processes_and_a_worker_process_and_restarts_a_dead_worker(
    procs: Processes, spec_checker: SpecChecker
) -> None:
    serve = procs.start("serve", server={"serve_processes": 2})
    wait_for(lambda: serve.logs().count("Application startup complete") == 2)
    wait_for(lambda: len(worker_pids(serve)) == 1)
    (worker,) = worker_pids(serve)
    pids = {child.pid for child in children(serve)}
    assert worker in pids and serve.pid not in pids
    assert len(pids) == 3, pids  # two API processes and the worker
    # short of CPU, the API processes come first (server.serve_worker_nice, default 5)
    base = psutil.Process(serve.pid).nice()
    assert psutil.Process(worker).nice() == min(base + 5, 19)
    assert {psutil.Process(pid).nice() for pid in pids - {worker}} == {base}
    client = Client(serve.url, spec_checker)
    first = client.submit_ok(CHAT, chat())
    assert client.wait_terminal(CHAT, first)["status"] == "completed"

    psutil.Process(worker).send_signal(signal.SIGKILL)
    serve.wait_log(r"the worker process exited with code -9; starting another")
    wait_for(lambda: len(worker_pids(serve)) == 2, timeout=30)
    replacement = worker_pids(serve)[1]
    assert replacement != worker
    assert psutil.Process(replacement).nice() == min(base + 5, 19)
    assert replacement in {child.pid for child in children(serve)}
    second = client.submit_ok(CHAT, chat())
    assert client.wait_terminal(CHAT, second)["status"] == "completed"
    client.close()

    alive = children(serve)
    assert serve.terminate(timeout=30) == 0
    assert not [child for child in alive if child.is_running() and child.status() != "zombie"]
    assert re.search(rf"worker \S+:{replacement}:\S+ stopped", serve.logs())


def test_serve_hands_back_the_worker_processes_jobs_on_sigterm(
    procs: Processes, upstream: UpstreamThread, database_url: str, spec_checker: SpecChecker
) -> None:
    serve = procs.start(
        "serve", server={"serve_processes": 1}, worker={"shutdown_grace_seconds": 1.0}
    )
    client = Client(serve.url, spec_checker)
    long_id = client.submit_ok(CHAT, chat("fake/delay-10"))
    wait_for(lambda: upstream.executions.get(long_id) == 1)
    client.close()

    assert serve.terminate(timeout=30) == 0

    row = job_row(database_url, long_id)
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("pending", 0, None)
    assert f"job {long_id} handed back to pending" in serve.logs()


def test_every_child_stops_when_serve_is_killed(procs: Processes) -> None:
    serve = procs.start("serve", server={"serve_processes": 2})
    wait_for(lambda: len(worker_pids(serve)) == 1)
    wait_for(lambda: len(children(serve)) == 3)
    alive = children(serve)

    serve.kill()

    def gone() -> bool:
        return not [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    wait_for(gone, timeout=30)


def test_serve_without_a_worker_process_runs_a_worker_in_each_api_process(
    procs: Processes, spec_checker: SpecChecker
) -> None:
    serve = procs.start("serve", server={"serve_processes": 2, "serve_worker_process": False})
    wait_for(lambda: len(worker_pids(serve)) == 2)
    api_pids = {child.pid for child in children(serve)}
    assert set(worker_pids(serve)) == api_pids
    # the API processes run the workers here: none of them is niced
    assert {psutil.Process(pid).nice() for pid in api_pids} == {psutil.Process(serve.pid).nice()}
    client = Client(serve.url, spec_checker)
    job_ids = [client.submit_ok(CHAT, chat()) for _ in range(4)]
    assert all(client.wait_terminal(CHAT, i)["status"] == "completed" for i in job_ids)
    client.close()
    assert serve.terminate(timeout=30) == 0
    assert not re.search(r"worker process", serve.logs())
