"""Checks for the fake OpenAI-compatible upstream in tests/upstream.py."""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.upstream import FaultMix, UpstreamThread, parse_directives

ROOT = Path(__file__).resolve().parents[1]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use a proxy
BOUNDARY = "upstream-test-boundary"


def call(
    url: str,
    payload: Any = None,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, bytes]:
    """POST (or GET when there is no body); returns status, headers and body, also for errors."""
    headers = dict(headers or {})
    if payload is not None:
        data = json.dumps(payload).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(
        url, data=data, headers=headers, method="GET" if data is None else "POST"
    )
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def chat(
    url: str, model: str = "ok", text: str = "hi", **headers: str
) -> tuple[int, Message, bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return call(f"{url}/chat/completions", body, headers=headers)


def multipart(
    fields: list[tuple[str, str]], files: list[tuple[str, str, bytes, str]]
) -> tuple[bytes, dict[str, str]]:
    chunks = []
    for name, value in fields:
        chunks.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for name, filename, content, content_type in files:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        chunks.append(head.encode() + content + b"\r\n")
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture
def up() -> Iterator[UpstreamThread]:
    with UpstreamThread() as server:
        yield server


def test_chat_completion_echoes_last_user_message(up: UpstreamThread) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "hello upstream"}]},
    ]
    payload = {"model": "ok", "messages": messages}
    status, headers, body = call(
        f"{up.url}/chat/completions", payload, headers={"X-Asyncgate-Job-Id": "job-1"}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    reply = json.loads(body)
    assert reply["object"] == "chat.completion"
    assert reply["model"] == "ok"
    assert reply["choices"][0]["message"] == {
        "role": "assistant",
        "content": "hello upstream",
        "refusal": None,
    }
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + 2
    [record] = up.requests
    assert (record.path, record.job_id, record.outcome) == ("/v1/chat/completions", "job-1", "ok")
    assert record.body["messages"] == messages
    assert up.executions == {"job-1": 1}


def test_other_json_endpoints_have_openai_shapes(up: UpstreamThread) -> None:
    status, _, body = call(f"{up.url}/embeddings", {"model": "ok", "input": ["a", "b", "a"]})
    vectors = [item["embedding"] for item in json.loads(body)["data"]]
    assert status == 200 and len(vectors) == 3 and len(vectors[0]) == 8
    assert vectors[0] == vectors[2] != vectors[1]
    _, _, body = call(f"{up.url}/responses", {"model": "m", "input": "say this"})
    response = json.loads(body)
    assert response["object"] == "response" and response["model"] == "m"
    assert response["output"][0]["content"][0]["text"] == "say this"
    _, _, body = call(f"{up.url}/completions", {"model": "ok", "prompt": "complete me"})
    assert json.loads(body)["choices"][0]["text"] == "complete me"
    _, _, body = call(f"{up.url}/images/generations", {"model": "ok", "prompt": "cat", "n": 3})
    assert len(json.loads(body)["data"]) == 3
    status, headers, audio = call(
        f"{up.url}/audio/speech", {"model": "ok", "input": "hi", "response_format": "opus"}
    )
    assert (status, headers["Content-Type"], audio[:4]) == (200, "audio/ogg", b"RIFF")


def test_status_and_retry_after(up: UpstreamThread) -> None:
    status, headers, body = chat(up.url, "status-503+retry-after-2")
    assert status == 503
    assert headers["Retry-After"] == "2"
    assert json.loads(body) == {
        "error": {
            "message": "simulated upstream error 503",
            "type": "server_error",
            "code": "503",
            "param": None,
        }
    }
    status, headers, body = chat(up.url, "status-400")
    assert status == 400 and headers["Retry-After"] is None
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("model", "content_type"),
    [
        ("bad-json", "application/json"),
        ("wrong-content-type", "text/html"),
        ("huge-200000", "application/json"),
    ],
)
def test_malformed_answers(up: UpstreamThread, model: str, content_type: str) -> None:
    status, headers, body = chat(up.url, model)
    assert status == 200
    assert headers.get_content_type() == content_type
    if model.startswith("huge"):
        assert len(body) >= 200_000 and json.loads(body)["model"] == model
    else:
        with pytest.raises(ValueError):
            json.loads(body)


def test_fail_first_counts_per_job(up: UpstreamThread) -> None:
    statuses = [chat(up.url, "fail-first-2", **{"X-Asyncgate-Job-Id": "a"})[0] for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    assert chat(up.url, "fail-first-2", **{"X-Asyncgate-Job-Id": "b"})[0] == 500
    assert up.executions == {"a": 4, "b": 1}
    stats = json.loads(call(up.url.replace("/v1", "/_upstream/stats"))[2])
    assert stats["requests"] == 5 and stats["executions"] == {"a": 4, "b": 1}
    arrivals = stats["arrivals"]["a"]
    assert len(arrivals) == 4 and arrivals == sorted(arrivals)
    assert abs(arrivals[-1] - time.monotonic()) < 5
    call(up.url.replace("/v1", "/_upstream/reset"), data=b"")
    assert up.requests == [] and up.executions == {}
    assert chat(up.url, "fail-first-1", **{"X-Asyncgate-Job-Id": "a"})[0] == 500


def test_image_edit_reports_every_upload(up: UpstreamThread) -> None:
    first, second = b"\x89PNG first image", b"\x89PNG the second, longer image"
    data, headers = multipart(
        [("model", "ok"), ("prompt", "add a hat"), ("n", "2")],
        [
            ("image[]", "one.png", first, "image/png"),
            ("image[]", "two.png", second, "image/png"),
            ("mask", "mask.png", b"m", "image/png"),
        ],
    )
    status, _, body = call(f"{up.url}/images/edits", data=data, headers=headers)
    assert status == 200
    reply = json.loads(body)
    assert len(reply["data"]) == 2 and reply["data"][0]["b64_json"]
    files = reply["received"]["files"]
    assert [(f["field"], f["filename"], f["size"]) for f in files] == [
        ("image[]", "one.png", len(first)),
        ("image[]", "two.png", len(second)),
        ("mask", "mask.png", 1),
    ]
    assert files[1]["sha256"] == hashlib.sha256(second).hexdigest()
    assert reply["received"]["fields"] == {"model": "ok", "prompt": "add a hat", "n": "2"}


def test_transcription_mentions_file_and_multipart_model_switches(up: UpstreamThread) -> None:
    audio = bytes(range(256)) * 10
    data, headers = multipart([("model", "ok")], [("file", "talk.wav", audio, "audio/wav")])
    status, _, body = call(f"{up.url}/audio/transcriptions", data=data, headers=headers)
    assert status == 200
    assert json.loads(body)["text"] == "Transcript of talk.wav (2560 bytes)."
    data, headers = multipart(
        [("model", "status-429+retry-after-1")], [("file", "talk.wav", audio, "audio/wav")]
    )
    status, headers_out, _ = call(f"{up.url}/audio/transcriptions", data=data, headers=headers)
    assert (status, headers_out["Retry-After"]) == (429, "1")


def test_drop_closes_the_connection(up: UpstreamThread) -> None:
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        chat(up.url, "drop")
    assert chat(up.url)[0] == 200  # the server keeps serving
    assert [r.outcome for r in up.requests] == ["drop", "ok"]


def test_expected_api_key() -> None:
    with UpstreamThread(expected_api_key="sk-up") as up:
        status, _, body = chat(up.url)
        assert status == 401
        assert json.loads(body)["error"]["type"] == "authentication_error"
        assert chat(up.url, Authorization="Bearer sk-wrong")[0] == 401
        assert chat(up.url, Authorization="Bearer sk-up")[0] == 200
        up.expected_api_key = None
        assert chat(up.url)[0] == 200


def test_fault_mix() -> None:
    with UpstreamThread(faults=FaultMix(error_429=1.0)) as up:
        status, headers, body = chat(up.url)
        assert (status, headers["Retry-After"]) == (429, "0")
        assert json.loads(body)["error"]["code"] == "429"
        up.faults = FaultMix(timeout=1.0, timeout_sleep=0.3)
        started = time.monotonic()
        assert chat(up.url, text="slow")[0] == 200
        assert time.monotonic() - started >= 0.3
        assert [r.outcome for r in up.requests] == ["fault-429", "fault-timeout"]
    with pytest.raises(ValueError):
        FaultMix(error_500=0.7, drop=0.5)


def test_parse_directives() -> None:
    found = parse_directives("prov/status-429+retry-after-1.5+delay-0.25+huge-10+bogus+status-x")
    assert (found.status, found.retry_after, found.delay, found.huge) == (429, "1.5", 0.25, 10)
    assert not found.drop and parse_directives("drop").drop
    assert parse_directives("status-200").status is None


def test_cli_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.upstream",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--seed",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the port file never appeared"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/v1"
        status, _, body = chat(url, text="from the cli")
        assert status == 200
        assert json.loads(body)["choices"][0]["message"]["content"] == "from the cli"
        assert json.loads(call(url.replace("/v1", "/_upstream/stats"))[2])["requests"] == 1
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert (stdout, stderr) == (b"", b"")
