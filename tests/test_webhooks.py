"""Webhooks end to end: a real gateway delivers to a real receiver on a loopback port, and
every delivery is verified with the ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from asyncgate.config import Secret
from asyncgate.models.database import Database
from asyncgate.models.webhooks import WebhookStore
from asyncgate.webhooks import SecretBox
from tests.conftest import Gateway, wait_for
from tests.helpers import CHAT, assert_error, chat, create_key
from tests.receiver import Delivery, Receiver

Sql = Callable[..., list[tuple[Any, ...]]]
SECRET_KEY = "a-test-secret-key-for-sealing-webhook-secrets"
FAST = {
    "secret_key": Secret(SECRET_KEY),
    "allow_http": True,
    "allow_private_networks": True,
    "retry_initial_seconds": 0.05,
    "retry_max_seconds": 0.2,
    "poll_seconds": 0.1,
    "timeout_seconds": 2.0,
}


@dataclass
class Hooks:
    gateway: Gateway
    receiver: Receiver
    admin: str
    """An admin virtual key."""

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.admin}", **kwargs.pop("headers", {})}
        return self.gateway.client.request(
            method, f"{self.gateway.url}/api/webhooks{path}", headers=headers, **kwargs
        )

    def endpoint(self, name: str = "hook", url: str | None = None, **fields: Any) -> str:
        """Create an endpoint; returns its secret."""
        body = {"name": name, "url": url or self.receiver.url, **fields}
        response = self.api("POST", "/endpoints", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["secret"])

    def submit(self, name: str = "hook", body: Any = None, **headers: str) -> str:
        response = self.gateway.submit(
            CHAT, json=body or chat(), headers={"x-bf-async-webhook": name, **headers}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def delivered(self, job_id: str, count: int = 1, timeout: float = 15) -> list[Delivery]:
        return wait_for(
            lambda: (found := self.receiver.for_job(job_id)) and len(found) >= count and found,
            timeout=timeout,
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def hooks_factory(
    gateway_factory: Callable[..., Gateway], receiver: Receiver, database_url: str
) -> Callable[..., Hooks]:
    admin = create_key(database_url, "admin", admin=True)

    def start(**webhooks: Any) -> Hooks:
        return Hooks(gateway_factory(webhooks={**FAST, **webhooks}), receiver, admin)

    return start


@pytest.fixture
def hooks(hooks_factory: Callable[..., Hooks]) -> Hooks:
    return hooks_factory()


def verify(secret: str, delivery: Delivery) -> Any:
    return Webhook(secret).verify(delivery.body, delivery.headers)


def test_a_completed_job_is_delivered_signed_with_its_response(hooks: Hooks) -> None:
    secret = hooks.endpoint()
    job_id = hooks.submit()
    [delivery] = hooks.delivered(job_id)
    body = verify(secret, delivery)
    assert body["event"] == "async_job.completed"
    data = body["data"]
    poll = hooks.gateway.poll(CHAT, job_id).json()
    assert data["job_id"] == job_id and data["status"] == "completed"
    assert data["request_type"] == "chat_completion" and data["status_code"] == 200
    assert data["response"] == poll["result"]
    assert data["result_url"] == f"{CHAT}/{job_id}"
    assert data["result_expires_at"] == poll["expires_at"]
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert delivery.headers["Content-Type"] == "application/json"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJD" * 8).verify(delivery.body, delivery.headers)


def test_failed_and_cancelled_jobs_send_their_events_with_the_error(hooks: Hooks) -> None:
    secret = hooks.endpoint()
    failed = hooks.submit(body=chat("fake/status-400"))
    [delivery] = hooks.delivered(failed)
    body = verify(secret, delivery)
    assert body["event"] == "async_job.failed"
    assert body["data"]["status_code"] == 400 and "message" in body["data"]["error"]["error"]
    assert "response" not in body["data"]

    slow = hooks.submit(body=chat("fake/delay-30"))
    wait_for(lambda: hooks.gateway.poll(CHAT, slow).json()["status"] == "processing")
    response = hooks.gateway.client.post(f"{hooks.gateway.url}{CHAT}/{slow}/cancel")
    assert response.status_code == 200, response.text
    [cancelled] = hooks.delivered(slow)
    assert verify(secret, cancelled)["event"] == "async_job.cancelled"


def test_only_subscribed_events_are_delivered(hooks: Hooks, sql: Sql) -> None:
    hooks.endpoint(events=["async_job.failed"])
    ok = hooks.submit()
    failed = hooks.submit(body=chat("fake/status-400"))
    hooks.delivered(failed)
    hooks.gateway.wait_terminal(CHAT, ok)
    time.sleep(0.3)
    assert hooks.receiver.for_job(ok) == []
    assert sql("SELECT count(*) FROM async_webhook_deliveries WHERE job_id = %s", ok) == [(0,)]


def test_submits_naming_unknown_disabled_or_foreign_endpoints_are_refused(
    hooks: Hooks, database_url: str
) -> None:
    response = hooks.gateway.submit(CHAT, json=chat(), headers={"x-bf-async-webhook": "nope"})
    body = assert_error(response, 400)
    assert "nope" in body["error"]["message"]

    hooks.endpoint("off")
    assert hooks.api("POST", "/endpoints/off/disable").json()["enabled"] is False
    response = hooks.gateway.submit(CHAT, json=chat(), headers={"x-bf-async-webhook": "off"})
    assert "disabled" in assert_error(response, 400)["error"]["message"]

    owner = create_key(database_url, "owner")
    other = create_key(database_url, "other")
    hooks.endpoint("mine", key="owner")
    for key, status in ((other, 400), (None, 400), (owner, 202)):
        headers = {"x-bf-async-webhook": "mine"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        response = hooks.gateway.submit(CHAT, json=chat(), headers=headers)
        assert response.status_code == status, (key, response.text)


def test_header_mode_submits_carry_a_webhook_too(hooks: Hooks) -> None:
    secret = hooks.endpoint()
    response = hooks.gateway.client.post(
        f"{hooks.gateway.url}/openai/v1/chat/completions",
        json=chat(),
        headers={"x-bf-async": "true", "x-bf-async-webhook": "hook"},
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    [delivery] = hooks.delivered(job_id)
    assert verify(secret, delivery)["data"]["status"] == "completed"


def test_transient_failures_are_retried_under_one_webhook_id(hooks: Hooks) -> None:
    secret = hooks.endpoint()
    hooks.receiver.answers = [503, {"drop": True}, 408, 200]
    job_id = hooks.submit()
    attempts = hooks.delivered(job_id, 4)
    assert {a.headers["webhook-id"] for a in attempts} == {attempts[0].headers["webhook-id"]}
    assert len({a.body for a in attempts}) == 1
    for a in attempts:
        verify(secret, a)
    msg = attempts[0].headers["webhook-id"]
    detail = wait_for(
        lambda: (d := hooks.api("GET", f"/deliveries/{msg}").json())["state"] == "delivered" and d
    )
    assert [a["outcome"] for a in detail["log"]] == ["retry", "retry", "retry", "delivered"]
    assert [a["status_code"] for a in detail["log"]] == [503, None, 408, 200]


def test_429_retry_after_is_honoured(hooks: Hooks) -> None:
    hooks.endpoint()
    hooks.receiver.answers = [{"status": 429, "headers": {"Retry-After": "1"}}]
    first, second = hooks.delivered(hooks.submit(), 2)
    assert second.arrived - first.arrived >= 0.95


@pytest.mark.parametrize(
    "plan", [{"status": 302, "headers": {"Location": "http://127.0.0.1:9/elsewhere"}}, 400, 410]
)
def test_redirects_and_other_4xx_fail_for_good(hooks: Hooks, plan: Any) -> None:
    hooks.endpoint()
    hooks.receiver.answers = [plan]
    job_id = hooks.submit()
    [delivery] = hooks.delivered(job_id)
    msg = delivery.headers["webhook-id"]
    detail = wait_for(
        lambda: (d := hooks.api("GET", f"/deliveries/{msg}").json())["state"] == "failed" and d
    )
    assert len(detail["log"]) == 1 and detail["log"][0]["outcome"] == "failed"
    time.sleep(0.4)
    assert len(hooks.receiver.for_job(job_id)) == 1


def test_a_slow_receiver_times_out_and_is_retried(hooks_factory: Callable[..., Hooks]) -> None:
    hooks = hooks_factory(timeout_seconds=0.3)
    hooks.endpoint()
    hooks.receiver.answers = [{"delay": 2.0}]
    first, _ = hooks.delivered(hooks.submit(), 2)
    msg = first.headers["webhook-id"]
    log = wait_for(lambda: (d := hooks.api("GET", f"/deliveries/{msg}").json())["log"][1:] and d)
    assert log["log"][0]["outcome"] == "retry" and "0.3s" in log["log"][0]["error"]


def test_exhausted_deliveries_disable_their_endpoint(
    hooks_factory: Callable[..., Hooks], caplog: pytest.LogCaptureFixture
) -> None:
    hooks = hooks_factory(retry_for_seconds=0.3, disable_after_exhausted=2)
    hooks.endpoint()
    hooks.receiver.default = 500
    jobs = [hooks.submit(), hooks.submit()]

    def states() -> list[str]:
        return [d["state"] for d in hooks.api("GET", "/deliveries").json()["data"]]

    wait_for(lambda: states() == ["exhausted", "exhausted"], timeout=20)
    endpoint = hooks.api("GET", "/endpoints/hook").json()
    assert endpoint["enabled"] is False and "exhausted 2 times" in endpoint["disabled_reason"]
    assert all(len(hooks.receiver.for_job(j)) >= 2 for j in jobs)
    assert any("disabled" in r.getMessage() and "hook" in r.getMessage() for r in caplog.records)

    hooks.receiver.default = 200
    assert hooks.api("POST", "/endpoints/hook/enable").json()["enabled"] is True
    msg = hooks.receiver.for_job(jobs[0])[0].headers["webhook-id"]
    assert hooks.api("POST", f"/deliveries/{msg}/redeliver").status_code == 202
    wait_for(lambda: hooks.api("GET", f"/deliveries/{msg}").json()["state"] == "delivered")
    assert hooks.receiver.for_job(jobs[0])[-1].headers["webhook-id"] == msg


def test_private_addresses_and_plain_http_are_refused_unless_allowed(
    hooks_factory: Callable[..., Hooks],
) -> None:
    hooks = hooks_factory(allow_private_networks=False)
    hooks.endpoint()
    job_id = hooks.submit()
    detail = wait_for(
        lambda: (d := hooks.api("GET", "/deliveries").json()["data"]) and d[0]["finished_at"] and d
    )
    assert detail[0]["state"] == "failed"
    assert "allow_private_networks" in detail[0]["last_error"]
    assert hooks.receiver.for_job(job_id) == []

    strict = hooks_factory(allow_http=False)
    response = strict.api("POST", "/endpoints", json={"name": "plain", "url": "http://x.test/"})
    assert "allow_http" in assert_error(response, 400)["error"]["message"]


def test_rotation_signs_with_both_secrets_during_the_grace_period(hooks: Hooks) -> None:
    old = hooks.endpoint()
    response = hooks.api("POST", "/endpoints/hook/rotate-secret")
    assert response.status_code == 200
    new = response.json()["secret"]
    assert new != old and response.json()["previous_secret_expires_at"] is not None
    [delivery] = hooks.delivered(hooks.submit())
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    assert verify(old, delivery) == verify(new, delivery)


def test_large_results_are_left_out_with_a_flag(hooks_factory: Callable[..., Hooks]) -> None:
    hooks = hooks_factory(max_payload_bytes=200)
    secret = hooks.endpoint()
    [delivery] = hooks.delivered(hooks.submit(body=chat("fake/huge-5000")))
    data = verify(secret, delivery)["data"]
    assert "response" not in data
    assert data["response_omitted"] is True and data["response_omitted_reason"] == "too_large"


def test_traceparent_is_forwarded_as_a_child_span(hooks: Hooks) -> None:
    hooks.endpoint()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    [delivery] = hooks.delivered(hooks.submit(traceparent=parent))
    sent = delivery.headers["traceparent"]
    assert sent.split("-")[1] == parent.split("-")[1] and sent != parent


def test_the_delivery_row_commits_with_the_terminal_state_or_not_at_all(
    hooks: Hooks, sql: Sql, database_url: str
) -> None:
    """No worker runs here: the trigger alone writes the delivery, in the job's transaction."""
    hooks.endpoint()
    hooks.gateway.stop()
    [(endpoint_id,)] = sql("SELECT id FROM async_webhook_endpoints WHERE name = 'hook'")
    job = sql(
        "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds, "
        "webhook_endpoint_id) VALUES (gen_random_uuid(), 'chat_completion', 'fake', 'fake/ok', "
        "'{}', 60, %s) RETURNING id",
        endpoint_id,
    )[0][0]
    finish = (
        "UPDATE async_jobs SET status = 'failed', status_code = 500, error = '{}', "
        "completed_at = now(), expires_at = now() + interval '1 minute' WHERE id = %s"
    )
    with psycopg.connect(database_url) as conn:
        conn.execute(finish, (job,))
        conn.rollback()
    assert sql("SELECT count(*) FROM async_webhook_deliveries WHERE job_id = %s", job) == [(0,)]
    with psycopg.connect(database_url) as conn:
        conn.execute(finish, (job,))
    assert sql(
        "SELECT event, job_status, job_status_code, state FROM async_webhook_deliveries "
        "WHERE job_id = %s",
        job,
    ) == [("async_job.failed", "failed", 500, "pending")]


def test_a_dead_workers_delivery_is_sent_again_when_its_lease_lapses(
    hooks_factory: Callable[..., Hooks], database_url: str, sql: Sql
) -> None:
    hooks = hooks_factory()
    secret = hooks.endpoint()

    async def claim_and_die() -> str:
        db = Database(database_url, pool_size=1)
        await db.open()
        try:
            store = WebhookStore(db, SecretBox(SECRET_KEY))
            claimed = await store.claim(
                "dead-worker", 10, per_endpoint=8, lease_seconds=1.0, max_payload_bytes=1000
            )
            return str(claimed[0].id) if claimed else ""
        finally:
            await db.close()

    # a worker that claims the delivery and dies before attempting it
    hooks.gateway.stop()
    [(endpoint_id,)] = sql("SELECT id FROM async_webhook_endpoints")
    sql(
        "INSERT INTO async_webhook_deliveries (id, endpoint_id, event) "
        "VALUES (gen_random_uuid(), %s, 'webhook.test')",
        endpoint_id,
    )
    claimed = asyncio.run(claim_and_die())
    assert claimed
    started = time.monotonic()
    survivor = hooks_factory()
    delivery = wait_for(lambda: survivor.receiver.deliveries, timeout=15)[0]
    assert time.monotonic() - started >= 0.5  # not before the dead worker's lease lapsed
    assert delivery.headers["webhook-id"] == "msg_" + claimed.replace("-", "")
    assert verify(secret, delivery)["event"] == "webhook.test"
    assert sql("SELECT attempts FROM async_webhook_deliveries")[0][0] == 2


def test_one_slow_endpoint_does_not_hold_back_another(
    hooks_factory: Callable[..., Hooks],
) -> None:
    hooks = hooks_factory(concurrency_per_endpoint=2)
    with Receiver(default={"delay": 1.0}) as slow:
        hooks.endpoint("slow", url=slow.url)
        hooks.endpoint("fast")
        slow_jobs = [hooks.submit("slow") for _ in range(6)]
        wait_for(lambda: len(slow.deliveries) >= 1)
        fast = hooks.submit("fast")
        [delivery] = hooks.delivered(fast, timeout=5)
        assert delivery.arrived - slow.deliveries[0].arrived < 0.9
        wait_for(lambda: len(slow.deliveries) == 6, timeout=20)
        assert slow.most_in_flight == 2
        assert {d.json["data"]["job_id"] for d in slow.deliveries} == set(slow_jobs)


def test_the_management_api_is_for_admin_keys_only(hooks: Hooks, database_url: str) -> None:
    url = f"{hooks.gateway.url}/api/webhooks/endpoints"
    assert_error(hooks.gateway.client.get(url), 401)
    plain = create_key(database_url, "plain")
    assert_error(hooks.gateway.client.get(url, headers={"Authorization": f"Bearer {plain}"}), 403)
    secret = hooks.endpoint()
    listed = hooks.api("GET", "/endpoints").json()["data"]
    assert [e["name"] for e in listed] == ["hook"] and "secret" not in listed[0]
    assert secret not in hooks.api("GET", "/endpoints/hook").text
    assert_error(hooks.api("POST", "/endpoints", json={"name": "hook", "url": "https://a.b"}), 409)
    assert_error(hooks.api("GET", "/endpoints/missing"), 404)
    assert_error(hooks.api("GET", "/deliveries/msg_" + "0" * 32), 404)
    bad = hooks.api("POST", "/endpoints", json={"name": "x", "url": "https://a.b", "key": "zz"})
    assert "zz" in assert_error(bad, 400)["error"]["message"]


def test_test_events_go_out_once_and_are_listed(hooks: Hooks) -> None:
    secret = hooks.endpoint()
    hooks.receiver.answers = [500]
    response = hooks.api("POST", "/endpoints/hook/test")
    assert response.status_code == 202
    msg = response.json()["id"]
    detail = wait_for(
        lambda: (d := hooks.api("GET", f"/deliveries/{msg}").json())["finished_at"] and d
    )
    assert detail["state"] == "failed" and detail["attempts"] == 1
    [delivery] = hooks.receiver.deliveries
    assert verify(secret, delivery)["data"] == {"endpoint": "hook"}
    listed = hooks.api("GET", "/deliveries", params={"endpoint": "hook", "state": "failed"})
    assert [d["id"] for d in listed.json()["data"]] == [msg]


def test_secrets_are_sealed_in_the_database(hooks: Hooks, sql: Sql) -> None:
    secret = hooks.endpoint()
    [(sealed,)] = sql("SELECT secret_sealed FROM async_webhook_endpoints")
    assert secret.encode() not in bytes(sealed)
    assert SecretBox(SECRET_KEY).open(bytes(sealed)) == secret
    assert SECRET_KEY not in repr(SecretBox(SECRET_KEY))
    assert SECRET_KEY not in repr(hooks.gateway.settings.webhooks)
