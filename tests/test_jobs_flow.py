"""What happens between submit and result when things go wrong: retries, fallbacks, upstream
errors, timeouts, unusable answers, lapsed leases and deadlines."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from asyncgate.config import ProviderConfig, Secret
from asyncgate.kinds import Kind
from tests.conftest import Gateway, make_settings, wait_for
from tests.helpers import (
    CHAT,
    EMBEDDINGS,
    IMAGE_GENERATIONS,
    TRANSCRIPTIONS,
    chat,
    for_job,
    insert_job,
    submit_ok,
)
from tests.upstream import UpstreamThread

Sql = Callable[..., list[tuple[Any, ...]]]


def models_seen(upstream: UpstreamThread, job_id: str) -> list[str]:
    return [r.model for r in for_job(upstream, job_id)]


def attempts(sql: Sql, job_id: str) -> int:
    [(count,)] = sql("SELECT attempts FROM async_jobs WHERE id = %s", job_id)
    return int(count)


def providers_with(
    database_url: str, upstream: UpstreamThread, name: str, **changes: Any
) -> dict[str, ProviderConfig]:
    """The test providers with one of them changed (timeout, api_key, ...)."""
    providers = dict(make_settings(database_url, upstream.url).providers)
    providers[name] = dataclasses.replace(providers[name], **changes)
    return providers


def test_fallback_after_retries_are_exhausted(
    gateway: Gateway, upstream: UpstreamThread, sql: Sql
) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat("fake/status-500", fallbacks=["backup/ok"]))
    done = gateway.wait_terminal(CHAT, job_id)
    assert done["status"] == "completed", done
    assert done["status_code"] == 200
    assert models_seen(upstream, job_id) == ["status-500"] * 3 + ["ok"]
    assert attempts(sql, job_id) == 1


def test_fallback_after_a_permanent_error_skips_retries(
    gateway: Gateway, upstream: UpstreamThread
) -> None:
    job_id = submit_ok(
        gateway,
        EMBEDDINGS,
        json={
            "model": "fake/status-400",
            "input": "x",
            "fallbacks": ["backup/status-404", "fake/ok"],
        },
    )
    done = gateway.wait_terminal(EMBEDDINGS, job_id)
    assert done["status"] == "completed", done
    assert models_seen(upstream, job_id) == ["status-400", "status-404", "ok"]


def test_image_fallbacks_as_provider_model_objects(
    gateway: Gateway, upstream: UpstreamThread
) -> None:
    job_id = submit_ok(
        gateway,
        IMAGE_GENERATIONS,
        json={
            "model": "fake/status-422",
            "prompt": "a cat",
            "fallbacks": [
                {"provider": "backup", "model": "status-403"},
                {"provider": "backup", "model": "ok"},
            ],
        },
    )
    done = gateway.wait_terminal(IMAGE_GENERATIONS, job_id)
    assert done["status"] == "completed", done
    assert models_seen(upstream, job_id) == ["status-422", "status-403", "ok"]
    assert all("fallbacks" not in r.body for r in for_job(upstream, job_id))


def test_multipart_fallback_resends_the_files(gateway: Gateway, upstream: UpstreamThread) -> None:
    audio = b"RIFF" + bytes(1000)
    job_id = submit_ok(
        gateway,
        TRANSCRIPTIONS,
        files={"file": ("a.wav", audio, "audio/wav")},
        data={"model": "fake/status-400", "fallbacks": "backup/ok"},
    )
    done = gateway.wait_terminal(TRANSCRIPTIONS, job_id)
    assert done["status"] == "completed", done
    seen = for_job(upstream, job_id)
    assert [r.model for r in seen] == ["status-400", "ok"]
    assert [r.files[0]["size"] for r in seen] == [len(audio), len(audio)]


def test_when_every_model_fails_the_last_error_is_kept(
    gateway: Gateway, upstream: UpstreamThread, sql: Sql
) -> None:
    job_id = submit_ok(gateway, CHAT, json=chat("fake/status-500", fallbacks=["backup/status-422"]))
    done = gateway.wait_terminal(CHAT, job_id)
    assert done["status"] == "failed", done
    assert "result" not in done
    assert done["status_code"] == 422
    assert done["error"] == {
        "is_bifrost_error": False,
        "status_code": 422,
        "error": {
            "type": "invalid_request_error",
            "code": "422",
            "message": "simulated upstream error 422",
        },
        "extra_fields": {
            "provider": "backup",
            "model_requested": "fake/status-500",
            "request_type": "chat_completion",
        },
    }
    assert models_seen(upstream, job_id) == ["status-500"] * 3 + ["status-422"]
    assert attempts(sql, job_id) == 1


def test_upstream_client_errors_fail_without_retry(
    gateway: Gateway, upstream: UpstreamThread
) -> None:
    jobs = {
        code: submit_ok(gateway, CHAT, json=chat(f"fake/status-{code}")) for code in (400, 404, 422)
    }
    for code, job_id in jobs.items():
        done = gateway.wait_terminal(CHAT, job_id)
        assert done["status"] == "failed", done
        assert done["status_code"] == code
        assert done["error"]["status_code"] == code
        assert done["error"]["error"]["message"] == f"simulated upstream error {code}"
        assert done["error"]["extra_fields"]["request_type"] == "chat_completion"
        assert upstream.server.executions[job_id] == 1, code


def test_wrong_provider_key_fails_401_without_retry(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread, database_url: str
) -> None:
    providers = providers_with(database_url, upstream, "fake", api_key=Secret("sk-wrong"))
    gateway = gateway_factory(providers=providers)
    job_id = submit_ok(gateway, CHAT, json=chat())
    done = gateway.wait_terminal(CHAT, job_id)
    assert done["status"] == "failed", done
    assert done["status_code"] == 401
    assert done["error"]["error"]["message"] == "Incorrect API key provided."
    assert done["error"]["error"]["code"] == "invalid_api_key"
    assert upstream.server.executions[job_id] == 1
    [record] = for_job(upstream, job_id)
    assert record.headers["authorization"] == "Bearer sk-wrong"


def test_upstream_server_errors_are_retried_then_fail(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"retry_tries": 4})
    failing = submit_ok(gateway, CHAT, json=chat("fake/status-503"))
    recovering = submit_ok(gateway, CHAT, json=chat("fake/fail-first-2"))
    limited = submit_ok(gateway, CHAT, json=chat("fake/status-429+retry-after-0"))
    done = gateway.wait_terminal(CHAT, failing)
    assert done["status"] == "failed", done
    assert done["status_code"] == 503
    assert done["error"]["error"]["message"] == "simulated upstream error 503"
    assert upstream.server.executions[failing] == 4
    done = gateway.wait_terminal(CHAT, recovering)
    assert done["status"] == "completed", done
    assert upstream.server.executions[recovering] == 3
    done = gateway.wait_terminal(CHAT, limited)
    assert done["status"] == "failed", done
    assert done["status_code"] == 429
    assert upstream.server.executions[limited] == 4


def test_upstream_timeout_fails_504(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread, database_url: str
) -> None:
    providers = providers_with(database_url, upstream, "fake", timeout=0.5)
    gateway = gateway_factory(providers=providers, worker={"retry_tries": 2})
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-1.5"))
    done = gateway.wait_terminal(CHAT, job_id)
    assert done["status"] == "failed", done
    assert done["status_code"] == 504
    assert done["error"]["is_bifrost_error"] is True
    assert done["error"]["error"]["type"] == "upstream_timeout"
    assert "0.5s" in done["error"]["error"]["message"]
    assert done["error"]["extra_fields"]["provider"] == "fake"
    assert upstream.server.executions[job_id] == 2
    quick = submit_ok(gateway, CHAT, json=chat("fake/ok"))
    assert gateway.wait_terminal(CHAT, quick)["status"] == "completed"


def test_unusable_answers_fail_502_and_the_worker_goes_on(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"max_response_bytes": 10_000})
    cases = {
        "bad-json": ("upstream_invalid_response", "invalid JSON", 1),
        "wrong-content-type": ("upstream_invalid_response", "'text/html'", 1),
        # jsonb refuses U+0000: the job fails with the reason, its batch's other jobs complete
        "nul-answer": ("upstream_invalid_response", "cannot be stored", 1),
        "huge-20000": ("upstream_response_too_large", "10000 byte limit", 1),
        "drop": ("upstream_connection_error", "connection failed", 3),
    }
    jobs = {name: submit_ok(gateway, CHAT, json=chat(f"fake/{name}")) for name in cases}
    for name, (error_type, words, tries) in cases.items():
        done = gateway.wait_terminal(CHAT, jobs[name])
        assert done["status"] == "failed", (name, done)
        assert done["status_code"] == 502, name
        assert done["error"]["error"]["type"] == error_type, name
        assert words in done["error"]["error"]["message"], name
        assert upstream.server.executions[jobs[name]] == tries, name
    after = submit_ok(gateway, CHAT, json=chat("fake/ok", text="still here"))
    done = gateway.wait_terminal(CHAT, after)
    assert done["status"] == "completed"
    assert done["result"]["choices"][0]["message"]["content"] == "still here"


def test_speech_with_a_json_answer_is_not_audio(gateway: Gateway, upstream: UpstreamThread) -> None:
    from tests.helpers import SPEECH

    job_id = submit_ok(
        gateway,
        SPEECH,
        json={"model": "fake/wrong-content-type", "input": "hi", "voice": "alloy"},
    )
    done = gateway.wait_terminal(SPEECH, job_id)
    assert done["status"] == "failed", done
    assert done["status_code"] == 502
    assert "audio" in done["error"]["error"]["message"]


def test_lapsed_lease_is_claimed_again(
    gateway_factory: Callable[..., Gateway],
    upstream: UpstreamThread,
    database_url: str,
    sql: Sql,
) -> None:
    lapsed = insert_job(
        database_url,
        model="fake/ok",
        status="processing",
        attempts=1,
        lease_owner="dead-worker",
        lease_expires_in=-5,
    )
    held = insert_job(
        database_url,
        model="fake/ok",
        status="processing",
        attempts=1,
        lease_owner="live-worker",
        lease_expires_in=600,
    )
    gateway = gateway_factory()
    done = gateway.wait_terminal(CHAT, lapsed)
    assert done["status"] == "completed", done
    assert attempts(sql, lapsed) == 2
    assert upstream.server.executions[lapsed] == 1
    rows = sql("SELECT status, lease_owner, attempts FROM async_jobs WHERE id = %s", held)
    assert rows == [("processing", "live-worker", 1)]
    assert held not in upstream.server.executions
    assert gateway.poll(CHAT, held).status_code == 202


def test_job_out_of_attempts_fails(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread, database_url: str
) -> None:
    job_id = insert_job(
        database_url,
        kind=Kind.EMBEDDING,
        model="fake/ok",
        request={"model": "fake/ok", "input": "x"},
        status="processing",
        attempts=2,
        lease_owner="dead-worker",
        lease_expires_in=-1,
    )
    gateway = gateway_factory(worker={"max_attempts": 2})
    done = gateway.wait_terminal(EMBEDDINGS, job_id)
    assert done["status"] == "failed", done
    assert done["status_code"] == 502
    assert done["error"]["error"]["type"] == "attempts_exhausted"
    assert "attempts" in done["error"]["error"]["message"]
    assert done["error"]["extra_fields"] == {
        "provider": "fake",
        "model_requested": "fake/ok",
        "request_type": "embedding",
    }
    assert job_id not in upstream.server.executions


def test_job_pending_too_long_fails_instead_of_running(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread, database_url: str
) -> None:
    stale = insert_job(database_url, model="fake/ok", created_seconds_ago=7200)
    gateway = gateway_factory(worker={"max_pending_seconds": 600})
    fresh = submit_ok(gateway, CHAT, json=chat())
    done = gateway.wait_terminal(CHAT, stale)
    assert done["status"] == "failed", done
    assert done["status_code"] == 504
    assert done["error"]["error"]["type"] == "pending_deadline_exceeded"
    assert done["error"]["extra_fields"]["request_type"] == "chat_completion"
    assert stale not in upstream.server.executions
    assert gateway.wait_terminal(CHAT, fresh)["status"] == "completed"


def test_job_longer_than_its_deadline_fails(
    gateway_factory: Callable[..., Gateway], upstream: UpstreamThread
) -> None:
    gateway = gateway_factory(worker={"max_job_seconds": 0.5})
    job_id = submit_ok(gateway, CHAT, json=chat("fake/delay-1.5"))
    done = gateway.wait_terminal(CHAT, job_id)
    assert done["status"] == "failed", done
    assert done["status_code"] == 504
    assert done["error"]["error"]["type"] == "job_deadline_exceeded"
    wait_for(lambda: upstream.server.executions.get(job_id) == 1, timeout=5)
