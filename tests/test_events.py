"""Long-polls (``Prefer: wait=N``) against a real gateway, PostgreSQL and upstream: answered
when the job ends, or as a poll after the wait; a client that leaves stops its wait; a lost
listening connection loses no answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from asyncgate.models.events import APPLICATION_NAME, JobEvents
from tests.conftest import Gateway, wait_for
from tests.helpers import CHAT, EMBEDDINGS, chat, insert_job, submit_ok

Sql = Callable[..., list[tuple[Any, ...]]]


def events_of(gateway: Gateway) -> JobEvents:
    """The gateway's own completion events (its lifespan state), to count waiters."""
    events = gateway.server.lifespan.state["services"].events
    assert isinstance(events, JobEvents)
    return events


def held_poll(gateway: Gateway, path: str, job_id: str, prefer: str) -> tuple[Any, float]:
    """A poll with ``Prefer: prefer``; the answer and the seconds it took."""
    started = time.monotonic()
    response = gateway.poll(path, job_id, headers={"Prefer": prefer})
    return response, time.monotonic() - started


def test_a_long_poll_returns_when_the_job_finishes_with_its_result(gateway: Gateway) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-1"))
    response, took = held_poll(gateway, CHAT, job_id, "wait=30")
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=30"
    body = response.json()
    assert body["status"] == "completed"
    assert body["result"]["object"] == "chat.completion"
    assert took < 30  # answered by the completion, not by the end of the wait
    assert events_of(gateway).waiting == 0


def test_a_long_poll_that_times_out_answers_202_like_a_poll(gateway: Gateway) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-4"))
    response, took = held_poll(gateway, CHAT, job_id, "respond-async, wait=1")
    assert response.status_code == 202, response.text
    assert response.headers["Preference-Applied"] == "wait=1"
    assert response.headers["Retry-After"] == "1"
    assert response.json()["status"] in ("pending", "processing")
    assert took >= 1


def test_the_wait_is_capped_by_the_setting(gateway_factory: Callable[..., Gateway]) -> None:
    gateway = gateway_factory(jobs={"max_wait_seconds": 1})
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-5"))
    response, took = held_poll(gateway, CHAT, job_id, "wait=3600")
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=1"
    assert took < 5


@pytest.mark.parametrize(
    "prefer", ["wait=soon", "wait=-1", "wait", "respond-async", "wait=1.5", "handling=lenient"]
)
def test_a_malformed_or_absent_wait_is_ignored(
    gateway: Gateway, prefer: str, database_url: str
) -> None:
    job_id = insert_job(database_url, model="fake/delay-30")
    response = gateway.poll(CHAT, job_id, headers={"Prefer": prefer})
    assert response.status_code == 202, response.text
    assert "Preference-Applied" not in response.headers


def test_the_first_wait_counts_and_quoted_values_are_read(
    gateway: Gateway, database_url: str
) -> None:
    job_id = insert_job(database_url, model="fake/delay-30")
    response = gateway.poll(CHAT, job_id, headers={"Prefer": 'return=minimal, WAIT="0", wait=9'})
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=0"


def test_a_finished_job_answers_a_long_poll_at_once(gateway: Gateway) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat())
    gateway.wait_terminal(CHAT, job_id)
    response, _ = held_poll(gateway, CHAT, job_id, "wait=60")
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "wait=60"


def test_waiting_on_submit_answers_with_the_result(gateway: Gateway) -> None:
    response = gateway.submit(
        EMBEDDINGS, {"model": "fake/ok", "input": "hi"}, headers={"Prefer": "wait=30"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=30"
    body = response.json()
    assert response.headers["Location"] == f"{EMBEDDINGS}/{body['id']}"
    assert body["status"] == "completed" and body["result"]["object"] == "list"


def test_waiting_on_submit_times_out_to_a_202(gateway: Gateway) -> None:
    response = gateway.submit(CHAT, chat("fake/delay-3"), headers={"Prefer": "wait=1"})
    assert response.status_code == 202, response.text
    assert response.headers["Preference-Applied"] == "wait=1"
    assert response.headers["Location"].endswith(response.json()["id"])
    assert response.json()["status"] in ("pending", "processing")


def test_unknown_jobs_still_answer_404_when_waited_on(gateway: Gateway) -> None:
    response = gateway.poll(
        CHAT, "3f1c2a9e-7b4d-4e6a-9c1f-2d8b5e7a0c41", headers={"Prefer": "wait=5"}
    )
    assert response.status_code == 404


def test_a_client_that_disconnects_leaves_no_waiter(gateway: Gateway, database_url: str) -> None:
    job_id = insert_job(database_url, model="fake/delay-30")
    events = events_of(gateway)
    with socket.create_connection(("127.0.0.1", gateway.port)) as client:
        client.sendall(
            f"GET {CHAT}/{job_id} HTTP/1.1\r\nHost: x\r\nPrefer: wait=60\r\n\r\n".encode()
        )
        wait_for(lambda: events.waiting == 1)
    wait_for(lambda: events.waiting == 0)


def test_many_waiters_on_one_job_all_get_the_answer(gateway: Gateway) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-1.5"))
    answers: list[int] = []

    def wait() -> None:
        answers.append(
            requests.get(
                f"{gateway.url}{CHAT}/{job_id}", headers={"Prefer": "wait=30"}, timeout=40
            ).status_code
        )

    threads = [threading.Thread(target=wait) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 20
    assert events_of(gateway).waiting == 0


def test_an_answer_survives_a_lost_listening_connection(gateway: Gateway, sql: Sql) -> None:
    """The listener's backend is killed and the job finishes before it reconnects, so its
    notification is lost; the re-read after the reconnect still answers the waiter."""
    events = events_of(gateway)
    wait_for(lambda: events.connected.is_set())
    events.reconnect_seconds = 2.5
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-1"))
    answer: list[tuple[Any, float]] = []
    thread = threading.Thread(
        target=lambda: answer.append(held_poll(gateway, CHAT, job_id, "wait=30"))
    )
    thread.start()
    wait_for(lambda: events.waiting == 1)
    [(killed,)] = sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s AND datname = current_database()",
        APPLICATION_NAME,
    )
    assert killed == 1
    thread.join()
    response, took = answer[0]
    assert response.status_code == 200 and response.json()["status"] == "completed"
    assert took < 30
    assert events.reconnects == 1


def test_one_listening_connection_serves_every_waiter(
    gateway: Gateway, sql: Sql, database_url: str
) -> None:
    job_ids = [insert_job(database_url, model="fake/delay-4") for _ in range(30)]
    events = events_of(gateway)
    wait_for(lambda: events.connected.is_set())
    before = sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")[0][0]
    sessions = [requests.Session() for _ in job_ids]
    threads = [
        threading.Thread(
            target=lambda s=s, j=j: s.get(
                f"{gateway.url}{CHAT}/{j}", headers={"Prefer": "wait=30"}, timeout=40
            )
        )
        for s, j in zip(sessions, job_ids, strict=True)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: events.waiting == len(job_ids))
    during = sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")[0][0]
    # The pool may have grown meanwhile (the worker runs the jobs), but not by one per waiter.
    assert during <= before + gateway.settings.database.pool_size < before + len(job_ids)
    [(listeners,)] = sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
        "AND datname = current_database()",
        APPLICATION_NAME,
    )
    assert listeners == 1
    for thread in threads:
        thread.join()
    for session in sessions:
        session.close()
    assert events.waiting == 0
