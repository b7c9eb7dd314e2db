"""Cancel against a real gateway, PostgreSQL and upstream: every state a job can be in, the
abort of a running upstream request, and a cancel racing real worker processes."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Gateway, wait_for
from tests.helpers import (
    CHAT,
    EMBEDDINGS,
    KEY_PLACES,
    assert_error,
    chat,
    create_key,
    for_job,
    insert_job,
    parse_time,
    submit_ok,
)
from tests.processes import Client, Processes, job_row
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

Sql = Callable[..., list[tuple[Any, ...]]]


def cancel(gateway: Gateway, path: str, job_id: str, **kwargs: Any) -> requests.Response:
    return gateway.client.post(f"{gateway.url}{path}/{job_id}/cancel", **kwargs)


def assert_cancelled(body: dict[str, Any]) -> None:
    assert body["status"] == "cancelled"
    assert body["status_code"] == 499
    assert body["error"]["error"]["type"] == "job_cancelled"
    assert body["error"]["extra_fields"]["request_type"] == "chat_completion"
    assert parse_time(body["expires_at"]) > parse_time(body["completed_at"])
    assert "result" not in body


def test_a_pending_job_is_cancelled_at_once(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"concurrency": 1})
    submit_ok(gateway, CHAT, json=chat("fake/delay-5"))  # holds the only slot
    job_id = submit_ok(gateway, CHAT, json=chat())
    response = cancel(gateway, CHAT, job_id)
    assert response.status_code == 200, response.text
    assert_cancelled(response.json())
    poll = gateway.poll(CHAT, job_id)
    assert poll.status_code == 200
    assert poll.json() == response.json()
    assert for_job(upstream, job_id) == []


def test_a_processing_job_is_cancelled_at_its_worker_which_aborts_the_upstream_request(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread, sql: Sql
) -> None:
    # Renewals far apart: only the done notification can stop the worker within the second.
    gateway = gateway_factory(worker={"lease_seconds": 30.0, "renew_seconds": 10.0})
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-20"))
    wait_for(lambda: for_job(upstream, job_id))
    cancelled_at = time.monotonic()
    response = cancel(gateway, CHAT, job_id)
    assert response.status_code == 200, response.text
    assert_cancelled(response.json())
    [request] = for_job(upstream, job_id)
    wait_for(lambda: request.closed_at is not None, timeout=5)
    assert request.closed_at is not None and request.closed_at - cancelled_at < 1.0
    assert request.outcome == "client-closed"
    time.sleep(0.5)  # a worker that kept going would write or retry now
    assert sql("SELECT status, lease_owner FROM async_jobs WHERE id = %s", job_id) == [
        ("cancelled", None)
    ]
    assert upstream.executions[job_id] == 1


def test_a_worker_that_missed_the_notification_stops_at_its_renewal(
    gateway: Gateway, upstream: UpstreamThread, sql: Sql
) -> None:
    """The cancel is written behind the worker's back (no notification): its next lease renewal
    finds the job is no longer its own and aborts the upstream request."""
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-20"))
    wait_for(lambda: for_job(upstream, job_id))
    sql(
        "UPDATE async_jobs SET status = 'cancelled', status_code = 499, error = '{}', "
        "completed_at = now(), expires_at = now() + interval '1 hour', lease_owner = NULL, "
        "lease_expires_at = NULL WHERE id = %s",
        job_id,
    )
    [request] = for_job(upstream, job_id)
    wait_for(lambda: request.closed_at is not None, timeout=10)
    assert sql("SELECT status FROM async_jobs WHERE id = %s", job_id) == [("cancelled",)]


@pytest.mark.parametrize(
    ("model", "state"), [("fake/ok", "completed"), ("fake/status-400", "failed")]
)
def test_a_finished_job_answers_409_and_keeps_its_outcome(
    gateway: Gateway, model: str, state: str
) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat(model))
    before = gateway.wait_terminal(CHAT, job_id)
    assert before["status"] == state
    body = assert_error(cancel(gateway, CHAT, job_id), 409)
    assert f"already {state}" in body["error"]["message"]
    assert body["error"]["type"] == "conflict_error"
    assert gateway.poll(CHAT, job_id).json() == before


def test_cancelling_again_answers_the_same_job(gateway: Gateway, database_url: str) -> None:
    job_id = insert_job(database_url, created_seconds_ago=0, model="fake/delay-5")
    first = cancel(gateway, CHAT, job_id)
    assert first.status_code == 200
    again = cancel(gateway, CHAT, job_id)
    assert again.status_code == 200
    assert again.json() == first.json()


def test_unknown_malformed_foreign_and_wrong_kind_jobs_answer_404(
    gateway: Gateway, database_url: str
) -> None:
    assert_error(cancel(gateway, CHAT, "3f1c2a9e-7b4d-4e6a-9c1f-2d8b5e7a0c41"), 404)
    assert_error(cancel(gateway, CHAT, "not-a-uuid"), 404)
    owner = create_key(database_url, "owner")
    other = create_key(database_url, "other")
    job_id = submit_ok(
        gateway, CHAT, json=chat("fake/delay-5"), headers=KEY_PLACES["bearer"](owner)
    )
    assert_error(cancel(gateway, CHAT, job_id, headers=KEY_PLACES["bearer"](other)), 404)
    assert_error(cancel(gateway, CHAT, job_id), 404)
    assert_error(cancel(gateway, EMBEDDINGS, job_id, headers=KEY_PLACES["bearer"](owner)), 404)
    mine = cancel(gateway, CHAT, job_id, headers=KEY_PLACES["x-bf-vk"](owner))
    assert mine.status_code == 200 and mine.json()["status"] == "cancelled"


def test_a_cancelled_job_expires_after_its_ttl(gateway: Gateway, database_url: str) -> None:
    job_id = insert_job(database_url, ttl_seconds=1, model="fake/delay-5")
    assert cancel(gateway, CHAT, job_id).status_code == 200
    wait_for(lambda: gateway.poll(CHAT, job_id).status_code == 404, timeout=10)
    assert_error(cancel(gateway, CHAT, job_id), 404)


def test_a_cancel_answers_the_long_polls_of_its_job(gateway: Gateway) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-20"))
    answers: list[requests.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(
            requests.get(f"{gateway.url}{CHAT}/{job_id}", headers={"Prefer": "wait=30"}, timeout=40)
        )
    )
    thread.start()
    events = gateway.server.lifespan.state["services"].events
    wait_for(lambda: events.waiting == 1)
    assert cancel(gateway, CHAT, job_id).status_code == 200
    thread.join()
    assert answers[0].status_code == 200
    assert_cancelled(answers[0].json())


# --- a cancel racing real worker processes ------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path, database_url: str, upstream: UpstreamThread) -> Iterator[Processes]:
    with Processes(tmp_path, database_url, upstream.url) as processes:
        yield processes


def test_a_cancel_racing_the_finish_ends_in_exactly_one_state(
    procs: Processes, database_url: str, spec_checker: SpecChecker
) -> None:
    """Many jobs are cancelled right around the moment their upstream answers: each ends
    either completed (the cancel answered 409) or cancelled (the worker's write was refused),
    and the database, the cancel's answer and both processes' logs agree on which."""
    config = procs.config()
    api, worker = procs.start_many(["api", "worker"], config)
    client = Client(api.url, spec_checker)
    answers: dict[str, int] = {}

    def cancel_after(seconds: float, job_id: str) -> None:
        time.sleep(seconds)
        response = requests.post(f"{api.url}{CHAT}/{job_id}/cancel", timeout=10)
        assert spec_checker.check(response)
        answers[job_id] = response.status_code

    jobs: list[str] = []
    threads: list[threading.Thread] = []
    for index in range(60):
        jobs.append(client.submit_ok(CHAT, chat("fake/delay-0.5")))
        # From well before the upstream answers (0.5 s after the claim) to well after it.
        thread = threading.Thread(target=cancel_after, args=((index % 12) * 0.08, jobs[-1]))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for job_id in jobs:
        client.wait_terminal(CHAT, job_id)
    time.sleep(1.0)  # any late write would land now

    worker_log, api_log = worker.logs(), api.logs()
    states = {job_id: job_row(database_url, job_id)["status"] for job_id in jobs}
    for job_id in jobs:
        completed_line = re.search(rf"job {job_id} \S+ \S+ completed status=200", worker_log)
        cancelled_line = f"job {job_id} kind=chat_completion cancelled" in api_log
        if states[job_id] == "completed":
            assert answers[job_id] == 409, job_id
            assert completed_line and not cancelled_line, job_id
        else:
            assert states[job_id] == "cancelled", (job_id, states[job_id])
            assert answers[job_id] == 200, job_id
            assert cancelled_line and not completed_line, job_id
    assert set(states.values()) == {"completed", "cancelled"}  # both sides of the race won
    client.close()
