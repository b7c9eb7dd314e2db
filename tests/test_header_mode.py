"""Header mode against a real gateway, PostgreSQL and upstream: the OpenAI-style routes,
synchronous and as jobs, with plain HTTP and with the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
import requests

from tests.conftest import Gateway, wait_for
from tests.helpers import (
    CHAT,
    EMBEDDINGS,
    JOB_NOT_FOUND,
    assert_error,
    chat,
    create_key,
    parse_time,
    submit_ok,
)
from tests.upstream import UpstreamThread

OPENAI_CHAT = "/openai/v1/chat/completions"
ASYNC = {"x-bf-async": "true"}


def retrieve(gateway: Gateway, path: str, job_id: str, **headers: str) -> Any:
    return gateway.client.post(gateway.url + path, headers={"x-bf-async-id": job_id, **headers})


def retrieved_terminal(gateway: Gateway, path: str, job_id: str) -> Any:
    def done() -> Any:
        response = retrieve(gateway, path, job_id)
        body = response.json()
        if response.status_code == 200 and body.get("status") in ("pending", "processing"):
            return None
        return (response,)  # a tuple: a Response is falsy for an error status

    return wait_for(done)[0]


@pytest.mark.parametrize("path", [OPENAI_CHAT, "/openai/chat/completions"])
def test_a_synchronous_call_answers_as_the_provider(gateway: Gateway, path: str) -> None:
    response = gateway.client.post(gateway.url + path, json=chat())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_a_synchronous_upstream_error_keeps_its_status(gateway: Gateway) -> None:
    response = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat("fake/status-422"))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["status_code"] == 422
    assert body["error"]["message"] == "simulated upstream error 422"


def test_an_async_call_answers_the_job_in_the_routes_shape(gateway: Gateway) -> None:
    response = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat(), headers=ASYNC)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["status"] == "pending"
    done = retrieved_terminal(gateway, OPENAI_CHAT, body["id"])
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["role"] == "assistant"


def test_an_async_response_is_a_responses_object(gateway: Gateway) -> None:
    response = gateway.client.post(
        gateway.url + "/openai/v1/responses",
        json={"model": "fake/ok", "input": "hi"},
        headers=ASYNC,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {"id": body["id"], "object": "response", "status": "pending", "output": []}


def test_streaming_is_refused(gateway: Gateway) -> None:
    response = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat(stream=True), headers=ASYNC)
    body = assert_error(response, 400)
    assert body["error"]["message"].startswith("streaming is not supported for async requests")


def test_neither_a_body_nor_a_job_id_is_400(gateway: Gateway) -> None:
    response = gateway.client.post(gateway.url + OPENAI_CHAT)
    assert "x-bf-async-id" in assert_error(response, 400)["error"]["message"]


@pytest.mark.parametrize("job_id", ["not-a-uuid", "3f1c2a9e-7b4d-4e6a-9c1f-2d8b5e7a0c41"])
def test_unknown_jobs_are_404(gateway: Gateway, job_id: str) -> None:
    body = assert_error(retrieve(gateway, OPENAI_CHAT, job_id), 404)
    assert body["error"]["message"] == JOB_NOT_FOUND


def test_jobs_are_shared_with_the_async_routes_both_ways(gateway: Gateway) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat())
    done = retrieved_terminal(gateway, OPENAI_CHAT, job_id)
    assert done.status_code == 200 and done.json()["object"] == "chat.completion"
    created = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat(), headers=ASYNC)
    polled = gateway.wait_terminal(CHAT, created.json()["id"])
    assert polled["status"] == "completed"
    # Another kind's route does not see the job.
    assert_error(retrieve(gateway, "/openai/v1/embeddings", job_id), 404)
    assert_error(gateway.poll(EMBEDDINGS, job_id), 404)


def test_keys_scope_retrieval(gateway: Gateway, database_url: str) -> None:
    mine, theirs = create_key(database_url, "mine"), create_key(database_url, "theirs")
    created = gateway.client.post(
        gateway.url + OPENAI_CHAT,
        json=chat(),
        headers={**ASYNC, "Authorization": f"Bearer {mine}"},
    )
    job_id = created.json()["id"]
    foreign = retrieve(gateway, OPENAI_CHAT, job_id, Authorization=f"Bearer {theirs}")
    assert assert_error(foreign, 404)["error"]["message"] == JOB_NOT_FOUND
    assert_error(retrieve(gateway, OPENAI_CHAT, job_id), 404)
    own = retrieve(gateway, OPENAI_CHAT, job_id, Authorization=f"Bearer {mine}")
    assert own.status_code == 200, own.text
    assert own.json().get("object") == "chat.completion" or own.json()["id"] == job_id


def test_a_failed_job_answers_its_stored_error(gateway: Gateway) -> None:
    created = gateway.client.post(
        gateway.url + OPENAI_CHAT, json=chat("fake/status-404"), headers=ASYNC
    )
    done = retrieved_terminal(gateway, OPENAI_CHAT, created.json()["id"])
    assert done.status_code == 404, done.text
    body = done.json()
    assert body["error"]["message"] == "simulated upstream error 404"
    assert body["extra_fields"]["request_type"] == "chat_completion"


def test_a_synchronous_call_past_its_wait_is_504_with_the_job_id(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(jobs={"sync_wait_seconds": 1})
    response = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat("fake/delay-3"))
    assert_error(response, 504)
    job_id = response.headers["x-bf-async-id"]
    done = retrieved_terminal(gateway, OPENAI_CHAT, job_id)
    assert done.status_code == 200 and done.json()["object"] == "chat.completion"


def test_the_openai_client(gateway: Gateway, database_url: str) -> None:
    key = create_key(database_url, "sdk")
    client = openai.OpenAI(base_url=gateway.url + "/openai/v1", api_key=key, max_retries=0)
    messages: Any = [{"role": "user", "content": "hello"}]
    completion = client.chat.completions.create(model="fake/ok", messages=messages)
    assert completion.choices[0].message.role == "assistant"
    pending = client.chat.completions.create(
        model="fake/ok", messages=messages, extra_headers=ASYNC
    )
    assert pending.id

    def fetched() -> Any:
        got = client.chat.completions.create(
            model="fake/ok", messages=messages, extra_headers={"x-bf-async-id": pending.id}
        )
        return got if got.choices else None

    assert wait_for(fetched).choices[0].message.role == "assistant"
    answer = client.responses.create(model="fake/ok", input="hi")
    assert answer.object == "response"


def test_a_cancelled_job_answers_its_stored_error(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"concurrency": 1})
    submit_ok(gateway, CHAT, json=chat("fake/delay-5"))  # holds the only slot
    created = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat(), headers=ASYNC)
    job_id = created.json()["id"]
    pending = retrieve(gateway, OPENAI_CHAT, job_id)
    assert pending.status_code == 200 and pending.json() == {"id": job_id, "status": "pending"}
    cancelled = gateway.client.post(f"{gateway.url}{CHAT}/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    answer = retrieve(gateway, OPENAI_CHAT, job_id)
    assert answer.status_code == 499, answer.text
    assert answer.json()["error"]["type"] == "job_cancelled"


def test_an_idempotency_key_names_one_job(gateway: Gateway) -> None:
    headers = {**ASYNC, "Idempotency-Key": "header-mode-1"}
    first = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat(), headers=headers)
    again = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat(), headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = gateway.client.post(gateway.url + OPENAI_CHAT, json=chat(text="bye"), headers=headers)
    assert_error(other, 422)


def test_a_client_that_goes_away_leaves_its_job_running(gateway: Gateway, sql: Any) -> None:
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(gateway.url + OPENAI_CHAT, json=chat("fake/delay-2"), timeout=0.5)
    rows = wait_for(lambda: sql("SELECT id FROM async_jobs WHERE status = 'completed'"))
    done = retrieve(gateway, OPENAI_CHAT, str(rows[0][0]))
    assert done.status_code == 200 and done.json()["object"] == "chat.completion"


def test_the_ttl_header_is_honoured(gateway: Gateway) -> None:
    created = gateway.client.post(
        gateway.url + OPENAI_CHAT,
        json=chat(),
        headers={**ASYNC, "x-bf-async-job-result-ttl": "120"},
    )
    done = gateway.wait_terminal(CHAT, created.json()["id"])
    kept = parse_time(done["expires_at"]) - parse_time(done["completed_at"])
    assert kept.total_seconds() == 120
