"""GET /metrics: Prometheus text that a real parser reads, with counters that move as jobs
run, and one consistent set across the processes of ``api --processes N``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway
from tests.launch import free_port, poll_until
from tests.processes import Processes
from tests.upstream import UpstreamThread

CHAT = "/v1/async/chat/completions"
MESSAGES = [{"role": "user", "content": "zebra umbrella"}]


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the gateway's metrics, by name and labels."""
    answer = requests.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_as_jobs_run(gateway: Gateway) -> None:
    before = scrape(gateway.url)
    ids = []
    for _ in range(3):
        submitted = gateway.submit(CHAT, {"model": "fake/ok", "messages": MESSAGES})
        assert submitted.status_code == 202, submitted.text
        ids.append(submitted.json()["id"])
    failing = gateway.submit(
        CHAT,
        {"model": "fake/status-400", "messages": MESSAGES},
    )
    assert failing.status_code == 202
    for job_id in [*ids, failing.json()["id"]]:
        gateway.wait_terminal(CHAT, job_id)
    refused = gateway.submit(CHAT, {"model": "fake/ok"})
    assert refused.status_code == 400
    after = scrape(gateway.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    op = "createAsyncChatCompletion"
    assert moved("asyncgate_http_requests_total", operation=op, status="202") == 4
    assert moved("asyncgate_http_requests_total", operation=op, status="400") == 1
    assert moved("asyncgate_http_request_duration_seconds_count", operation=op) == 5
    assert moved("asyncgate_jobs_submitted_total", kind="chat_completion", provider="fake") == 4
    finished = {"kind": "chat_completion", "provider": "fake"}
    assert moved("asyncgate_jobs_finished_total", **finished, status="completed") == 3
    assert moved("asyncgate_jobs_finished_total", **finished, status="failed") == 1
    assert moved("asyncgate_upstream_requests_total", provider="fake", status="200") == 3
    assert moved("asyncgate_upstream_requests_total", provider="fake", status="400") == 1
    assert moved("asyncgate_job_pickup_delay_seconds_count", kind="chat_completion") == 4
    assert moved("asyncgate_job_run_seconds_count", kind="chat_completion") == 4
    assert value(after, "asyncgate_queue_jobs", status="pending") == 0
    assert ("asyncgate_queue_oldest_pending_seconds", frozenset()) in after
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    assert "zebra" not in text
    for job_id in ids:
        assert job_id not in text


@pytest.fixture
def procs(tmp_path: Path, database_url: str, upstream: UpstreamThread) -> Iterator[Processes]:
    with Processes(tmp_path, database_url, upstream.url) as processes:
        yield processes


def test_api_processes_report_one_set(procs: Processes) -> None:
    api = procs.start("api", server={"processes": 2})
    for _ in range(20):
        answer = requests.get(f"{api.url}/health", timeout=10)
        assert answer.status_code == 200
    # Each scrape is answered by either process, and each reports the requests of both.
    totals = {
        value(scrape(api.url), "asyncgate_http_requests_total", operation="getHealth", status="200")
        for _ in range(6)
    }
    assert min(totals) >= 20 + 1  # the readiness check's own requests count too
    assert len(totals) == 1
    # A graceful stop takes the children down with their parent.
    assert api.terminate() == 0


def test_a_worker_process_serves_its_own_metrics(procs: Processes) -> None:
    port = free_port()
    config = procs.config(metrics={"port": port})
    api, _worker = procs.start_many(["api", "worker"], config)
    submitted = requests.post(
        f"{api.url}{CHAT}",
        json={"model": "fake/ok", "messages": [{"role": "user", "content": "hello"}]},
        timeout=10,
    )
    assert submitted.status_code == 202, submitted.text
    labels = {"kind": "chat_completion", "provider": "fake", "status": "completed"}
    finished = poll_until(
        lambda: (
            value(scrape(f"http://127.0.0.1:{port}"), "asyncgate_jobs_finished_total", **labels)
            or None
        ),
        timeout=20,
        interval=0.1,
    )
    assert finished == 1
    # The API process ran no job: its own counters say so.
    assert value(scrape(api.url), "asyncgate_jobs_finished_total", **labels) == 0
