"""A client generated from the served ``/openapi.json`` by openapi-python-client, a generator
the gateway does not control, runs a submit, a poll and an error case against a real server:
the spec must be complete and plain enough for generators, not only for Connexion."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import Gateway

PACKAGE = "asyncgate_generated_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")


def _generate(gateway: Gateway, where: Path) -> Any:
    spec = where / "openapi.json"
    spec.write_bytes(gateway.client.get(f"{gateway.url}/openapi.json").content)
    config = where / "generator.yaml"
    config.write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    done = subprocess.run(
        [GENERATOR, "generate", "--path", spec, "--config", config, "--meta", "none"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The generator warns about every part of the spec it had to skip.
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))


def test_a_generated_client_submits_polls_and_reads_errors(
    gateway: Gateway, tmp_path: Path
) -> None:
    client_package = _generate(gateway, tmp_path)
    submit = importlib.import_module(f"{PACKAGE}.api.async_jobs.create_async_chat_completion")
    poll = importlib.import_module(f"{PACKAGE}.api.async_jobs.get_async_chat_completion_job")
    models = importlib.import_module(f"{PACKAGE}.models")
    with client_package.Client(base_url=gateway.url, raise_on_unexpected_status=True) as client:
        _flow(client, submit, poll, models)


def _flow(client: Any, submit: Any, poll: Any, models: Any) -> None:
    """Submit a chat job, poll it to its result, then read a 404 and a 400 as typed errors."""
    body = models.CreateAsyncChatCompletionBody.from_dict(
        {"model": "fake/ok", "messages": [{"role": "user", "content": "hello generated"}]}
    )
    accepted = submit.sync_detailed(client=client, body=body, x_bf_async_job_result_ttl=600)
    assert accepted.status_code == 202, accepted.content
    assert isinstance(accepted.parsed, models.CreateAsyncChatCompletionResponse202)
    job_id = accepted.parsed.id
    assert isinstance(job_id, uuid.UUID)

    deadline = time.monotonic() + 20
    while True:
        polled = poll.sync_detailed(job_id, client=client)
        if polled.status_code == 200 or time.monotonic() > deadline:
            break
        assert polled.status_code == 202, polled.content
        time.sleep(0.05)
    assert polled.status_code == 200, polled.content
    job = polled.parsed
    assert job.status.value == "completed"
    assert "hello generated" in job.result.to_dict()["choices"][0]["message"]["content"]

    missing = poll.sync_detailed(uuid.uuid4(), client=client)
    assert missing.status_code == 404
    assert missing.parsed.is_bifrost_error is True
    assert missing.parsed.error.message == "job not found or expired"

    refused = submit.sync_detailed(
        client=client,
        body=models.CreateAsyncChatCompletionBody.from_dict(
            {"model": "no-slash", "messages": [{"role": "user", "content": "x"}]}
        ),
    )
    assert refused.status_code == 400
    assert "provider/model" in refused.parsed.error.message
