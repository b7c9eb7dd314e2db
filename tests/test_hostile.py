"""Hostile and malformed requests get a 4xx BifrostError (never a 500 or a stack trace) and
store nothing; virtual keys never leak into logs, answers or the database."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.conftest import UPSTREAM_KEY, Gateway, make_settings, with_database
from tests.processes import Client, Processes
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

CHAT = "/v1/async/chat/completions"
TRANSCRIPTIONS = "/v1/async/audio/transcriptions"
IMAGE_EDITS = "/v1/async/images/edits"
IMAGE_VARIATIONS = "/v1/async/images/variations"
JSON_LIMIT = 256 * 1024
UPLOAD_LIMIT = 32 * 1024
LIMITS = {"max_json_bytes": JSON_LIMIT, "max_upload_bytes": UPLOAD_LIMIT, "max_files": 2}
JSON_HEADERS = {"Content-Type": "application/json"}
OUR_LOGGERS = ("asyncgate", "uvicorn", "handlers", "models", "worker")


def chat(content: Any = "hello", model: str = "fake/ok", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def raw_chat(tail: bytes) -> bytes:
    """A chat body whose last member is written verbatim (for what ``json.dumps`` won't write)."""
    return b'{"model": "fake/ok", "messages": [{"role": "user", "content": "x"}], ' + tail + b"}"


def assert_client_error(response: requests.Response, *statuses: int) -> dict[str, Any]:
    """A 4xx (one of ``statuses``) in the BifrostError shape, with no trace of the internals."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["is_bifrost_error"] is True
    assert body["status_code"] == response.status_code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    for leak in ("Traceback", 'File "', "psycopg", "None"):
        assert leak not in body["error"]["message"], body
    return body


@dataclass(frozen=True)
class Hostile:
    """One hostile request: ``send`` gets the gateway's session and base URL."""

    name: str
    send: Callable[[requests.Session, str], requests.Response]
    statuses: tuple[int, ...]


def post(path: str, **kwargs: Any) -> Callable[[requests.Session, str], requests.Response]:
    return lambda session, url: session.post(url + path, **kwargs)


def call(method: str, path: str) -> Callable[[requests.Session, str], requests.Response]:
    return lambda session, url: session.request(method, url + path)


def chunked(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 16384):
        yield data[start : start + 16384]


OVERSIZED_JSON = raw_chat(b'"pad": "' + b"x" * (JSON_LIMIT + 1) + b'"')

HOSTILE = [
    Hostile("json-over-limit", post(CHAT, data=OVERSIZED_JSON, headers=JSON_HEADERS), (413,)),
    Hostile(
        "json-over-limit-chunked",
        # Plain requests: the spec checker cannot read a streamed request body.
        lambda _, url: requests.post(
            url + CHAT, data=chunked(OVERSIZED_JSON), headers=JSON_HEADERS, timeout=10
        ),
        (413,),
    ),
    Hostile(
        "upload-over-limit",
        post(
            TRANSCRIPTIONS,
            data={"model": "fake/ok"},
            files={"file": ("a.wav", b"\0" * (UPLOAD_LIMIT + 1), "audio/wav")},
        ),
        (413,),
    ),
    Hostile(
        "too-many-files",
        post(
            IMAGE_EDITS,
            data={"model": "fake/ok", "prompt": "p"},
            files=[("image[]", (f"{i}.png", b"png", "image/png")) for i in range(3)],
        ),
        (413,),
    ),
    Hostile(
        "multipart-wrong-boundary",
        post(
            TRANSCRIPTIONS,
            data=b'--other\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake/ok\r\n',
            headers={"Content-Type": "multipart/form-data; boundary=expected"},
        ),
        (400,),
    ),
    Hostile(
        "multipart-no-boundary",
        post(TRANSCRIPTIONS, data=b"garbage", headers={"Content-Type": "multipart/form-data"}),
        (400,),
    ),
    Hostile(
        "multipart-truncated",
        post(
            TRANSCRIPTIONS,
            data=b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake/o',
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ),
        (400,),
    ),
    Hostile(
        "text-plain",
        post(CHAT, data=b"hello", headers={"Content-Type": "text/plain"}),
        (400, 415),
    ),
    Hostile(
        "no-content-type",
        post(CHAT, data=b'{"model": "fake/ok"}', headers={"Content-Type": ""}),
        (400, 415),
    ),
    Hostile(
        "invalid-utf8",
        post(CHAT, data=raw_chat(b'"name": "\xff\xfe\xc3"'), headers=JSON_HEADERS),
        (400,),
    ),
    Hostile(
        "lone-surrogate",
        post(CHAT, data=raw_chat(b'"name": "\\ud800"'), headers=JSON_HEADERS),
        (400,),
    ),
    Hostile(
        "nested-arrays",
        post(
            CHAT, data=raw_chat(b'"pad": ' + b"[" * 100_000 + b"]" * 100_000), headers=JSON_HEADERS
        ),
        (400,),
    ),
    Hostile(
        "nested-objects",
        post(
            CHAT,
            data=raw_chat(b'"pad": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_000),
            headers=JSON_HEADERS,
        ),
        (400,),
    ),
    Hostile("negative-n", post(CHAT, json=chat(n=-5)), (400,)),
    Hostile("absurd-temperature", post(CHAT, json=chat(temperature=1e308)), (400,)),
    Hostile(
        "absurd-integer",
        post(CHAT, data=raw_chat(b'"n": ' + b"9" * 400), headers=JSON_HEADERS),
        (400,),
    ),
    Hostile(
        "infinite-number",
        post(CHAT, data=raw_chat(b'"temperature": 1e999'), headers=JSON_HEADERS),
        (400,),
    ),
    Hostile(
        "nan-literal",
        post(CHAT, data=raw_chat(b'"temperature": NaN'), headers=JSON_HEADERS),
        (400,),
    ),
    Hostile("nul-in-message", post(CHAT, json=chat("a\u0000b")), (400,)),
    Hostile("nul-in-model", post(CHAT, json=chat(model="fake/ok\u0000")), (400,)),
    Hostile("nul-in-key", post(CHAT, json={**chat(), "x\u0000": 1}), (400,)),
    Hostile(
        "nul-in-form-field",
        post(
            TRANSCRIPTIONS,
            data={"model": "fake/ok", "prompt": "a\u0000b"},
            files={"file": ("a.wav", b"RIFF", "audio/wav")},
        ),
        (400,),
    ),
    Hostile("array-body", post(CHAT, json=[chat()]), (400,)),
    Hostile("null-body", post(CHAT, data=b"null", headers=JSON_HEADERS), (400,)),
    Hostile("empty-body", post(CHAT, data=b"", headers=JSON_HEADERS), (400,)),
    Hostile("model-without-provider", post(CHAT, json=chat(model="ok")), (400,)),
    Hostile("unknown-provider", post(CHAT, json=chat(model="nobody/ok")), (400,)),
    Hostile("streaming", post(CHAT, json=chat(stream=True)), (400,)),
    Hostile(
        "malformed-authorization",
        post(CHAT, json=chat(), headers={"Authorization": "Basic %%%"}),
        (400,),
    ),
    Hostile("unknown-path", call("GET", "/v1/nothing-here"), (404,)),
    Hostile("unknown-async-kind", post("/v1/async/video", json={"model": "fake/ok"}), (404,)),
    Hostile("delete-submit-path", call("DELETE", CHAT), (405,)),
    Hostile("get-submit-path", call("GET", CHAT), (405,)),
    Hostile("put-job", call("PUT", f"{CHAT}/00000000-0000-0000-0000-000000000000"), (405,)),
    Hostile("post-health", call("POST", "/health"), (405,)),
    Hostile("job-id-not-a-uuid", call("GET", f"{CHAT}/../../etc/passwd"), (404,)),
    Hostile("job-id-huge", call("GET", f"{CHAT}/{'a' * 8000}"), (404,)),
]


@dataclass
class Shared:
    gateway: Gateway
    database_url: str
    upstream: UpstreamThread

    def count_jobs(self) -> int:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM async_jobs").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(scope="module")
def shared(
    postgres_url: str, template_database: str, spec_checker: SpecChecker
) -> Iterator[Shared]:
    """One gateway with small limits for the whole module (starting one per case is slow)."""
    name = f"asyncgate_hostile_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = with_database(postgres_url, name)
    try:
        with UpstreamThread(expected_api_key=UPSTREAM_KEY) as upstream:
            gateway = Gateway(make_settings(url, upstream.url, limits=LIMITS), url, spec_checker)
            gateway.start()
            try:
                yield Shared(gateway, url, upstream)
            finally:
                gateway.stop()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_hostile_request_is_a_client_error(
    case: Hostile, shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    jobs_before = shared.count_jobs()

    response = case.send(shared.gateway.client, shared.gateway.url)

    assert_client_error(response, *case.statuses)
    assert shared.count_jobs() == jobs_before
    server_errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(OUR_LOGGERS)
    ]
    assert not server_errors


def test_large_string_within_the_limit_goes_through_intact(shared: Shared) -> None:
    text = "ü" * (JSON_LIMIT // 3)
    body = json.dumps(chat(text), ensure_ascii=False).encode()
    assert JSON_LIMIT // 2 < len(body) < JSON_LIMIT
    response = shared.gateway.submit(CHAT, data=body, headers=JSON_HEADERS)
    assert response.status_code == 202, response.text[:500]

    done = shared.gateway.wait_terminal(CHAT, response.json()["id"])

    assert done["status"] == "completed", str(done)[:500]
    assert done["result"]["choices"][0]["message"]["content"] == text


def test_chunked_body_without_content_length_is_accepted(shared: Shared) -> None:
    """Clients that stream their body (no Content-Length) are served like any other."""
    body = json.dumps(chat("sent in chunks")).encode()
    response = requests.post(
        shared.gateway.url + CHAT, data=chunked(body), headers=JSON_HEADERS, timeout=10
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 202, response.text

    done = shared.gateway.wait_terminal(CHAT, response.json()["id"])

    assert done["result"]["choices"][0]["message"]["content"] == "sent in chunks"


def test_bad_row_does_not_sink_submissions_committed_with_it(shared: Shared) -> None:
    """Concurrent submissions share a transaction; a NUL in one must not fail the others."""
    jobs_before = shared.count_jobs()
    bodies = [chat("a\u0000b") if i % 4 == 0 else chat(f"ok {i}") for i in range(40)]

    def send(body: dict[str, Any]) -> requests.Response:
        with requests.Session() as session:
            return session.post(shared.gateway.url + CHAT, json=body, timeout=10)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(send, bodies))

    for body, response in zip(bodies, responses, strict=True):
        if "\u0000" in body["messages"][0]["content"]:
            assert_client_error(response, 400)
        else:
            assert response.status_code == 202, response.text
    assert shared.count_jobs() == jobs_before + 30


def test_integer_wider_than_64_bits_is_stored_exactly(shared: Shared) -> None:
    digits = str(2**70)
    response = shared.gateway.submit(
        CHAT, data=raw_chat(b'"x_wide": ' + digits.encode()), headers=JSON_HEADERS
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    assert shared.gateway.wait_terminal(CHAT, job_id)["status"] == "completed"
    with psycopg.connect(shared.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT request->>'x_wide' FROM async_jobs WHERE id = %s", (job_id,))
        assert row.fetchone() == (digits,)


def test_the_request_is_stored_as_the_json_the_client_sent(shared: Shared) -> None:
    """The body is not re-encoded on its way to the job table: a decimal a double cannot hold
    keeps every digit."""
    exact = "0.1000000000000000000001"
    response = shared.gateway.submit(
        CHAT, data=raw_chat(b'"x_exact": ' + exact.encode()), headers=JSON_HEADERS
    )
    assert response.status_code == 202, response.text
    with psycopg.connect(shared.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT request->>'x_exact' FROM async_jobs WHERE id = %s", (response.json()["id"],)
        )
        assert row.fetchone() == (exact,)


def test_form_field_the_upstream_request_cannot_carry_fails_the_job_at_once(
    shared: Shared,
) -> None:
    """Accepted (the spec allows any field name), but no HTTP request can carry that name."""
    parts = [(b"model", b"fake/ok", None), (b"a\x01b", b"v", None), (b"image", b"PNG", b"a.png")]
    body = b""
    for name, value, filename in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename:
            disposition += b'; filename="' + filename + b'"\r\nContent-Type: image/png'
        body += b"--B\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"
    response = shared.gateway.submit(
        IMAGE_VARIATIONS,
        data=body + b"--B--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=B"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    done = shared.gateway.wait_terminal(IMAGE_VARIATIONS, job_id)

    assert done["status"] == "failed", done
    assert done["status_code"] == 400
    assert "cannot be sent upstream" in done["error"]["error"]["message"]
    assert shared.upstream.executions.get(job_id) is None


@pytest.fixture
def procs(tmp_path: Path, database_url: str, upstream: UpstreamThread) -> Iterator[Processes]:
    with Processes(tmp_path, database_url, upstream.url) as processes:
        yield processes


def test_virtual_key_never_leaks_and_must_match_exactly(
    procs: Processes,
    upstream: UpstreamThread,
    spec_checker: SpecChecker,
    sql: Callable[..., list[tuple[Any, ...]]],
) -> None:
    config = procs.config(log_level="DEBUG", auth={"required": True})
    created = procs.run_cli(config, "keys", "create", "ci")
    key = created.stdout.strip()
    assert key.startswith("sk-bf-")
    assert key not in created.stderr
    serve = procs.start("serve", config)
    client = Client(serve.url, spec_checker)
    seen: list[str] = []
    basic = base64.b64encode(f"someone:{key}".encode()).decode()
    placements = {
        "bearer": {"Authorization": f"Bearer {key}"},
        "basic": {"Authorization": f"Basic {basic}"},
        "x-bf-vk": {"x-bf-vk": key},
        "x-api-key": {"x-api-key": key},
    }

    for headers in placements.values():
        response = client.submit(CHAT, chat(), headers=headers)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        done = client.wait_terminal(CHAT, job_id, headers=placements["x-api-key"])
        assert done["status"] == "completed"
        seen += [response.text, str(response.headers), str(done)]
        unauthenticated = client.poll(CHAT, job_id)
        seen.append(unauthenticated.text)
        assert_client_error(unauthenticated, 401)

    near = key[:-1] + ("B" if key[-1] == "A" else "A")
    rejected = client.submit(CHAT, chat(), headers={"Authorization": f"Bearer {near}"})
    assert_client_error(rejected, 400)
    hidden = client.poll(CHAT, job_id, headers={"x-bf-vk": near})
    assert_client_error(hidden, 404)
    seen += [rejected.text, hidden.text]
    assert serve.terminate() == 0

    logs = serve.logs()
    assert "completed status=200" in logs
    for secret in (key, near, key[len("sk-bf-") :]):
        assert secret not in logs
        assert not [text for text in seen if secret in text]
        for table in ("async_jobs", "async_job_files", "virtual_keys"):
            rows = sql(f"SELECT t::text FROM {table} t")
            assert not [row for row in rows if secret in row[0]], table
    assert sql("SELECT key_hash FROM virtual_keys") == [(hashlib.sha256(key.encode()).digest(),)]
    assert upstream.requests
    for request in upstream.requests:
        assert key not in str(request.headers)
        assert request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_request_content_is_never_logged(procs: Processes, spec_checker: SpecChecker) -> None:
    """At DEBUG, neither the gateway nor Connexion writes what clients sent: not in accepted
    jobs, not in refused JSON or multipart bodies, not in headers."""
    marker = "zebra-marker-" + uuid.uuid4().hex
    serve = procs.start("serve", procs.config(log_level="DEBUG"))
    client = Client(serve.url, spec_checker)
    accepted = client.submit(CHAT, chat(marker))
    assert accepted.status_code == 202
    assert client.wait_terminal(CHAT, accepted.json()["id"])["status"] == "completed"
    refused = [
        client.submit(CHAT, chat(temperature=marker)),
        client.submit(CHAT, {"model": marker, "messages": [{"role": "user"}]}),
        client.submit(CHAT, {"model": "fake/ok", "messages": marker}),
        client.submit(CHAT, chat(marker + "\u0000")),
        client.submit(CHAT, chat(), headers={"x-bf-vk": marker}),
        requests.post(
            serve.url + "/v1/async/images/edits",
            data={"model": "fake/ok", "prompt": marker, "n": marker},
            files={"image": ("a.png", b"\x89PNG", "image/png")},
            timeout=10,
        ),
        requests.post(
            serve.url + "/v1/async/images/edits",
            files={"model": (None, "fake/ok"), "prompt": (None, marker)},
            timeout=10,
        ),
    ]
    for response in refused:
        body = assert_client_error(response, 400)
        assert marker not in body["error"]["message"]
    assert serve.terminate() == 0
    logs = serve.logs()
    assert "DEBUG" in logs and "completed status=200" in logs
    assert marker not in logs
