"""Upstream trouble: transient failures retried with backoff and Retry-After, permanent ones
not, then fallbacks, all inside the job's deadline and each provider's concurrency cap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asyncgate.config import ProviderConfig, Secret
from tests.conftest import UPSTREAM_KEY, Gateway
from tests.upstream import RecordedRequest, UpstreamThread

CHAT = "/v1/async/chat/completions"
PERMANENT = (400, 401, 403, 404, 422)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def submit(gateway: Gateway, body: dict[str, Any]) -> str:
    response = gateway.submit(CHAT, body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def requests_of(upstream: UpstreamThread, job_id: str) -> list[RecordedRequest]:
    return [r for r in upstream.requests if r.job_id == job_id]


def test_transient_failures_are_retried_up_to_retry_tries(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"retry_tries": 3})
    recovers = submit(gateway, chat("fake/fail-first-2"))
    never_recovers = submit(gateway, chat("fake/fail-first-5"))

    recovered = gateway.wait_terminal(CHAT, recovers)
    failed = gateway.wait_terminal(CHAT, never_recovers)

    assert recovered["status"] == "completed", recovered
    assert upstream.executions[recovers] == 3
    assert failed["status"] == "failed", failed
    assert failed["status_code"] == 500
    assert upstream.executions[never_recovers] == 3


def test_retry_waits_for_the_upstream_retry_after(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(
        worker={"retry_tries": 2, "retry_base_seconds": 0.01, "retry_max_seconds": 5.0}
    )
    job_id = submit(gateway, chat("fake/status-429+retry-after-1"))

    done = gateway.wait_terminal(CHAT, job_id)

    assert done["status"] == "failed", done
    assert done["status_code"] == 429
    first, second = requests_of(upstream, job_id)
    assert second.arrival - first.arrival >= 1.0


def test_permanent_upstream_errors_are_not_retried(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"retry_tries": 3})
    permanent = {status: submit(gateway, chat(f"fake/status-{status}")) for status in PERMANENT}
    transient = submit(gateway, chat("fake/status-503"))

    for status, job_id in permanent.items():
        done = gateway.wait_terminal(CHAT, job_id)
        assert done["status"] == "failed", done
        assert done["status_code"] == status
        assert upstream.executions[job_id] == 1, status
    assert gateway.wait_terminal(CHAT, transient)["status_code"] == 503
    assert upstream.executions[transient] == 3


def test_dropped_connections_are_retried(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"retry_tries": 3})
    job_id = submit(gateway, chat("fake/drop"))

    done = gateway.wait_terminal(CHAT, job_id)

    assert done["status"] == "failed", done
    assert done["status_code"] == 502
    assert done["error"]["error"]["type"] == "upstream_connection_error"
    assert upstream.executions[job_id] == 3


def test_fallbacks_are_tried_after_the_retries_and_the_last_error_wins(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"retry_tries": 2})
    rescued = submit(gateway, chat("fake/status-500", fallbacks=["backup/ok"]))
    doomed = submit(gateway, chat("fake/status-503", fallbacks=["backup/status-502"]))

    done = gateway.wait_terminal(CHAT, rescued)
    assert done["status"] == "completed", done
    assert [r.model for r in requests_of(upstream, rescued)] == ["status-500", "status-500", "ok"]

    failed = gateway.wait_terminal(CHAT, doomed)
    assert failed["status"] == "failed", failed
    assert failed["status_code"] == 502
    assert failed["error"]["error"]["message"] == "simulated upstream error 502"
    assert failed["error"]["extra_fields"]["provider"] == "backup"
    assert failed["error"]["extra_fields"]["model_requested"] == "fake/status-503"
    models = [r.model for r in requests_of(upstream, doomed)]
    assert models == ["status-503", "status-503", "status-502", "status-502"]


def test_job_deadline_fails_a_slow_job(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"max_job_seconds": 1.0})
    job_id = submit(gateway, chat("fake/delay-5", fallbacks=["backup/delay-5"]))

    done = gateway.wait_terminal(CHAT, job_id)

    assert done["status"] == "failed", done
    assert done["status_code"] == 504
    assert done["error"]["error"]["type"] == "job_deadline_exceeded"
    assert "maximum run time" in done["error"]["error"]["message"]
    assert upstream.executions[job_id] == 1


def max_overlap(records: list[RecordedRequest], duration: float) -> int:
    """Most requests in flight at once, each taken to last ``duration`` from its arrival."""
    return max(
        sum(1 for other in records if other.arrival <= r.arrival < other.arrival + duration)
        for r in records
    )


def test_provider_concurrency_cap_does_not_block_other_providers(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    providers = {
        name: ProviderConfig(
            name=name,
            base_url=upstream.url,
            api_key=Secret(UPSTREAM_KEY),
            timeout=5.0,
            max_concurrency=cap,
        )
        for name, cap in (("fake", 2), ("backup", 64))
    }
    gateway = gateway_factory(providers=providers)
    capped = [submit(gateway, chat("fake/delay-0.6")) for _ in range(6)]
    free = [submit(gateway, chat("backup/delay-0.1")) for _ in range(2)]

    for job_id in capped + free:
        assert gateway.wait_terminal(CHAT, job_id)["status"] == "completed"

    capped_requests = [r for r in upstream.requests if r.job_id in capped]
    free_requests = [r for r in upstream.requests if r.job_id in free]
    assert len(capped_requests) == 6
    assert max_overlap(capped_requests, 0.6) == 2
    # The other provider's jobs reached the upstream while capped ones were still queued.
    assert max(r.arrival for r in free_requests) < max(r.arrival for r in capped_requests)
