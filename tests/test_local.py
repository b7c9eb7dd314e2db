"""The local provider end to end: a real gateway and real PostgreSQL running the bundled models.

One gateway serves the whole module (the models load once, in its inference process). It has
the local provider and ``down``, a remote provider nothing listens on, for the fallbacks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from asyncgate import local
from asyncgate.config import ProviderConfig
from tests.conftest import Gateway, make_settings
from tests.launch import create_database, drop_database, free_port
from tests.spec_check import SpecChecker

pytestmark = [
    pytest.mark.skipif(not local.available(), reason="the local extra is not installed"),
    pytest.mark.timeout(300),
]

CHAT = "/v1/async/chat/completions"
JOB_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def gateway(
    postgres_url: str, template_database: str, spec_checker: SpecChecker
) -> Iterator[Gateway]:
    name = f"asyncgate_test_local_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres_url, name, template=template_database)
    down = f"http://127.0.0.1:{free_port()}/v1"
    providers = {
        "local": ProviderConfig(name="local", type="local"),
        "down": ProviderConfig(name="down", base_url=down, timeout=2.0),
    }
    settings = make_settings(url, down).replace(providers=providers)
    gateway = Gateway(settings, url, spec_checker).start()
    try:
        yield gateway
    finally:
        gateway.stop()
        drop_database(postgres_url, name)


def run(gateway: Gateway, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Submit a job, wait for it to end, and return its completed result."""
    response = gateway.submit(path, body, **kwargs)
    assert response.status_code == 202, response.text
    job = gateway.wait_terminal(path, response.json()["id"], timeout=JOB_TIMEOUT)
    assert job["status"] == "completed", job
    return job["result"]  # type: ignore[no-any-return]


def test_chat_completion_is_generated_with_real_usage(gateway: Gateway) -> None:
    result = run(
        gateway,
        CHAT,
        {
            "model": "local/smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            "max_tokens": 24,
        },
    )
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"].strip()
    usage = result["usage"]
    assert usage["prompt_tokens"] > 5
    assert 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_text_completion_and_response(gateway: Gateway) -> None:
    text = run(
        gateway,
        "/v1/async/completions",
        {"model": "local/smollm2-135m-instruct", "prompt": "The sky is", "max_tokens": 6},
    )
    assert text["object"] == "text_completion" and text["choices"][0]["text"]
    assert text["usage"]["completion_tokens"] == 6
    response = run(
        gateway,
        "/v1/async/responses",
        {
            "model": "local/smollm2-135m-instruct",
            "instructions": "Answer briefly.",
            "input": "What colour is grass?",
            "max_output_tokens": 16,
        },
    )
    assert response["object"] == "response"
    assert response["output"][0]["content"][0]["text"].strip()
    assert 0 < response["usage"]["output_tokens"] <= 16


def test_fallback_from_a_failing_remote_provider_to_local(gateway: Gateway) -> None:
    result = run(
        gateway,
        CHAT,
        {
            "model": "down/gpt-4o-mini",
            "fallbacks": ["local/smollm2-135m-instruct"],
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8,
        },
    )
    assert result["model"] == "smollm2-135m-instruct"
    assert result["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        (
            CHAT,
            {"model": "local/gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
            "local/smollm2-135m-instruct",
        ),
        (
            "/v1/async/images/generations",
            {"model": "local/smollm2-135m-instruct", "prompt": "a cat"},
            "chat_completion",
        ),
        (
            CHAT,
            {
                "model": "down/gpt-4o",
                "fallbacks": ["local/whisper-tiny.en"],
                "messages": [{"role": "user", "content": "Hi"}],
            },
            "fallback",
        ),
    ],
)
def test_what_local_cannot_serve_is_refused_at_submit(
    gateway: Gateway, path: str, body: dict[str, Any], says: str
) -> None:
    response = gateway.submit(path, body)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]
