"""Every way a request is refused: each answer is a BifrostError with a readable message,
never a 500, and nothing reaches the job table. The cases share one gateway."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests

from tests.conftest import Gateway
from tests.helpers import (
    CHAT,
    EMBEDDINGS,
    IMAGE_EDITS,
    IMAGE_GENERATIONS,
    IMAGE_VARIATIONS,
    JOB_NOT_FOUND,
    OCR,
    RERANK,
    RESPONSES,
    SPEECH,
    TEXT,
    TRANSCRIPTIONS,
    assert_error,
    chat,
    shared_gateway,
)
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

WAV = ("a.wav", b"RIFF....WAVEfmt ", "audio/wav")
PNG = ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")
SOME_ID = "0192f4c1-7a3e-7b2d-9c4f-5e6a7b8c9d0e"
"""A well-formed job id no job has (fixed: test ids must be the same in every collection)."""


@pytest.fixture(scope="module")
def shared(
    postgres_url: str, template_database: str, spec_checker: SpecChecker
) -> Iterator[tuple[Gateway, UpstreamThread, str]]:
    with shared_gateway(postgres_url, template_database, spec_checker) as parts:
        yield parts


@pytest.fixture
def gw(shared: tuple[Gateway, UpstreamThread, str]) -> Iterator[Gateway]:
    """The shared gateway; the test must leave no job behind and send nothing upstream."""
    gateway, upstream, database_url = shared
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM async_jobs")
    upstream.server.reset()
    yield gateway
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM async_jobs").fetchone()
    assert row == (0,), "a refused request left a job behind"
    assert upstream.server.requests == []


JSON_CASES: dict[str, tuple[str, Any, str]] = {
    # name: (path, body, words the message must contain)
    "model-without-provider": (CHAT, chat("gpt-4o"), "model"),
    "model-with-space": (CHAT, chat("fake/gpt 4o"), "model"),
    "model-not-a-string": (CHAT, chat(42), "model"),
    "unknown-provider": (CHAT, chat("openai/gpt-4o"), "openai"),
    "unknown-provider-in-fallbacks": (
        CHAT,
        chat(fallbacks=["backup/ok", "nowhere/model"]),
        "nowhere",
    ),
    "fallback-without-provider": (CHAT, chat(fallbacks=["just-a-model"]), "fallbacks"),
    "unknown-provider-in-image-fallbacks": (
        IMAGE_GENERATIONS,
        {"model": "fake/ok", "prompt": "x", "fallbacks": [{"provider": "nope", "model": "m"}]},
        "nope",
    ),
    "image-fallback-missing-model": (
        IMAGE_GENERATIONS,
        {"model": "fake/ok", "prompt": "x", "fallbacks": [{"provider": "backup"}]},
        "model",
    ),
    "chat-stream": (CHAT, chat(stream=True), "stream"),
    "text-stream": (TEXT, {"model": "fake/ok", "prompt": "x", "stream": True}, "stream"),
    "responses-stream": (RESPONSES, {"model": "fake/ok", "input": "x", "stream": True}, "stream"),
    "speech-sse": (
        SPEECH,
        {"model": "fake/ok", "input": "x", "voice": "alloy", "stream_format": "sse"},
        "sse",
    ),
    "chat-missing-messages": (CHAT, {"model": "fake/ok"}, "messages"),
    "chat-empty-messages": (CHAT, {"model": "fake/ok", "messages": []}, "messages"),
    "chat-missing-model": (CHAT, {"messages": [{"role": "user", "content": "x"}]}, "model"),
    "text-missing-prompt": (TEXT, {"model": "fake/ok"}, "prompt"),
    "responses-missing-input": (RESPONSES, {"model": "fake/ok"}, "input"),
    "embeddings-missing-input": (EMBEDDINGS, {"model": "fake/ok"}, "input"),
    "embeddings-empty-input": (EMBEDDINGS, {"model": "fake/ok", "input": []}, "input"),
    "speech-missing-voice": (SPEECH, {"model": "fake/ok", "input": "x"}, "voice"),
    "speech-missing-input": (SPEECH, {"model": "fake/ok", "voice": "alloy"}, "input"),
    "image-missing-prompt": (IMAGE_GENERATIONS, {"model": "fake/ok"}, "prompt"),
    "n-not-an-integer": (CHAT, chat(n="x"), "n"),
    "temperature-not-a-number": (CHAT, chat(temperature="hot"), "temperature"),
    "temperature-out-of-range": (CHAT, chat(temperature=7), "temperature"),
    "message-without-role": (CHAT, {"model": "fake/ok", "messages": [{"content": "x"}]}, "role"),
    "speech-bad-format": (
        SPEECH,
        {"model": "fake/ok", "input": "x", "voice": "alloy", "response_format": "mp4"},
        "response_format",
    ),
    "rerank-missing-model": (RERANK, {"query": "q", "documents": ["a"]}, "model is required"),
    "rerank-malformed-model": (
        RERANK,
        {"model": "rank-1", "query": "q", "documents": ["a"]},
        "model must be provider/model",
    ),
    "rerank-missing-query": (RERANK, {"model": "fake/r", "documents": ["a"]}, "query is required"),
    "rerank-empty-query": (
        RERANK,
        {"model": "fake/r", "query": "", "documents": ["a"]},
        "query must not be empty",
    ),
    "rerank-blank-query": (
        RERANK,
        {"model": "fake/r", "query": "  ", "documents": ["a"]},
        "query must be the query the documents are ranked against, not blank",
    ),
    "rerank-missing-documents": (
        RERANK,
        {"model": "fake/r", "query": "q"},
        "documents is required",
    ),
    "rerank-empty-documents": (
        RERANK,
        {"model": "fake/r", "query": "q", "documents": []},
        "documents must not be empty",
    ),
    "rerank-blank-document": (
        RERANK,
        {"model": "fake/r", "query": "q", "documents": ["a", " "]},
        "documents[1] must be document text, not blank",
    ),
    "rerank-blank-document-text": (
        RERANK,
        {"model": "fake/r", "query": "q", "documents": [{"text": ""}]},
        "documents[0].text must be document text, not blank",
    ),
    "rerank-document-without-text": (
        RERANK,
        {"model": "fake/r", "query": "q", "documents": [{"id": "x"}]},
        "documents[0].text is required",
    ),
    "rerank-document-a-number": (
        RERANK,
        {"model": "fake/r", "query": "q", "documents": [7]},
        "documents[0] must be a string or an object",
    ),
    "rerank-top-n-zero": (
        RERANK,
        {"model": "fake/r", "query": "q", "documents": ["a"], "top_n": 0},
        "top_n must be >= 1",
    ),
    "ocr-missing-model": (
        OCR,
        {"document": {"type": "image_url", "image_url": "data:,x"}},
        "model is required",
    ),
    "ocr-missing-document": (OCR, {"model": "fake/ocr"}, "document is required"),
    "ocr-unknown-document-type": (
        OCR,
        {"model": "fake/ocr", "document": {"type": "file_id", "file_id": "f"}},
        "document.type must be one of: document_url, image_url",
    ),
    "ocr-document-url-missing": (
        OCR,
        {"model": "fake/ocr", "document": {"type": "document_url"}},
        "document.document_url is required",
    ),
    "ocr-image-url-missing": (
        OCR,
        {"model": "fake/ocr", "document": {"type": "image_url", "document_url": "x"}},
        "document.image_url is required",
    ),
    "ocr-document-not-an-object": (
        OCR,
        {"model": "fake/ocr", "document": "https://example.com/a.pdf"},
        "document must be an object",
    ),
    "nul-in-prompt": (CHAT, chat(text="a\u0000b"), "NUL"),
    "body-is-a-list": (CHAT, [chat()], "object"),
    "body-is-a-string": (CHAT, "hello", "object"),
    "body-is-null": (CHAT, None, ""),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_json_request_refused(gw: Gateway, case: str) -> None:
    path, body, words = JSON_CASES[case]
    response = gw.client.post(gw.url + path, json=body)
    error = assert_error(response, 400)
    assert words in error["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "fake/ok", "messages": [', b"not json at all", b'{"model": "fake/ok",}', b""],
    ids=["truncated", "text", "trailing-comma", "empty"],
)
def test_malformed_json_refused(gw: Gateway, raw: bytes) -> None:
    response = gw.client.post(gw.url + CHAT, data=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400)


def test_invalid_utf8_refused(gw: Gateway) -> None:
    response = gw.client.post(
        gw.url + CHAT,
        data=b'{"model": "fake/ok", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400)


MULTIPART_CASES: dict[str, tuple[str, list[tuple[str, Any]], str]] = {
    # name: (path, multipart parts as for requests' files=, words the message must contain)
    "transcription-stream-true": (
        TRANSCRIPTIONS,
        [("file", WAV), ("model", (None, "fake/ok")), ("stream", (None, "true"))],
        "stream",
    ),
    "transcription-missing-file": (TRANSCRIPTIONS, [("model", (None, "fake/ok"))], "file"),
    "transcription-file-as-text": (
        TRANSCRIPTIONS,
        [("file", (None, "not a file")), ("model", (None, "fake/ok"))],
        "file",
    ),
    "transcription-missing-model": (TRANSCRIPTIONS, [("file", WAV)], "model"),
    "transcription-model-without-provider": (
        TRANSCRIPTIONS,
        [("file", WAV), ("model", (None, "whisper-1"))],
        "model",
    ),
    "transcription-unknown-provider": (
        TRANSCRIPTIONS,
        [("file", WAV), ("model", (None, "openai/whisper-1"))],
        "openai",
    ),
    "transcription-unknown-fallback": (
        TRANSCRIPTIONS,
        [("file", WAV), ("model", (None, "fake/ok")), ("fallbacks", (None, "nope/x"))],
        "nope",
    ),
    "transcription-temperature-not-a-number": (
        TRANSCRIPTIONS,
        [("file", WAV), ("model", (None, "fake/ok")), ("temperature", (None, "abc"))],
        "temperature",
    ),
    "transcription-bad-response-format": (
        TRANSCRIPTIONS,
        [("file", WAV), ("model", (None, "fake/ok")), ("response_format", (None, "mp3"))],
        "response_format",
    ),
    "edit-missing-image": (
        IMAGE_EDITS,
        [("model", (None, "fake/ok")), ("prompt", (None, "x")), ("mask", PNG)],
        "image",
    ),
    "edit-image-and-image-array": (
        IMAGE_EDITS,
        [("model", (None, "fake/ok")), ("prompt", (None, "x")), ("image", PNG), ("image[]", PNG)],
        "image",
    ),
    "edit-missing-prompt": (IMAGE_EDITS, [("model", (None, "fake/ok")), ("image", PNG)], "prompt"),
    "edit-n-not-an-integer": (
        IMAGE_EDITS,
        [("model", (None, "fake/ok")), ("prompt", (None, "x")), ("image", PNG), ("n", (None, "x"))],
        "n",
    ),
    "edit-image-as-text": (
        IMAGE_EDITS,
        [("model", (None, "fake/ok")), ("prompt", (None, "x")), ("image", (None, "a.png"))],
        "image",
    ),
    "variation-missing-image": (IMAGE_VARIATIONS, [("model", (None, "fake/ok"))], "image"),
    "variation-image-as-text": (
        IMAGE_VARIATIONS,
        [("model", (None, "fake/ok")), ("image", (None, "a.png"))],
        "image",
    ),
    "variation-two-images": (
        IMAGE_VARIATIONS,
        [("model", (None, "fake/ok")), ("image", PNG), ("image", PNG)],
        "image",
    ),
}


@pytest.mark.parametrize("case", list(MULTIPART_CASES))
def test_multipart_request_refused(gw: Gateway, case: str) -> None:
    path, parts, words = MULTIPART_CASES[case]
    response = gw.client.post(gw.url + path, files=parts)
    error = assert_error(response, 400)
    assert words in error["error"]["message"]


def test_broken_multipart_body_refused(gw: Gateway) -> None:
    response = gw.client.post(
        gw.url + TRANSCRIPTIONS,
        data=b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake/ok',
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(response, 400)


def test_wrong_content_type_refused(gw: Gateway) -> None:
    response = gw.client.post(
        gw.url + CHAT, data="model=fake/ok", headers={"Content-Type": "text/plain"}
    )
    assert_error(response, 415)
    response = gw.client.post(gw.url + TRANSCRIPTIONS, json={"model": "fake/ok"})
    assert_error(response, 415)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/async/nothing"),
        ("POST", "/v1/async/nothing"),
        ("GET", "/v1/chat/completions"),
        ("GET", f"/v1/async/chat/completions/{SOME_ID}/extra"),
    ],
)
def test_unknown_path_is_404(gw: Gateway, method: str, path: str) -> None:
    response = gw.client.request(method, gw.url + path, json=chat() if method == "POST" else None)
    assert_error(response, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", CHAT),
        ("DELETE", CHAT),
        ("PUT", EMBEDDINGS),
        ("POST", f"{CHAT}/{SOME_ID}"),
        ("DELETE", f"{TRANSCRIPTIONS}/{SOME_ID}"),
    ],
)
def test_wrong_method_is_405(gw: Gateway, method: str, path: str) -> None:
    response = gw.client.request(method, gw.url + path)
    assert_error(response, 405)


@pytest.mark.parametrize(
    "job_id",
    [SOME_ID, "not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"],
    ids=["unknown", "malformed", "number", "bad-hex"],
)
def test_poll_of_missing_job_is_404(gw: Gateway, job_id: str) -> None:
    error = assert_error(gw.poll(CHAT, job_id), 404)
    assert error["error"]["message"] == JOB_NOT_FOUND


def test_poll_on_another_kinds_path_is_404(
    shared: tuple[Gateway, UpstreamThread, str],
) -> None:
    gateway, _, database_url = shared
    response = gateway.submit(CHAT, chat())
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    try:
        assert gateway.wait_terminal(CHAT, job_id)["status"] == "completed"
        for path in (TEXT, RESPONSES, EMBEDDINGS, SPEECH, TRANSCRIPTIONS, IMAGE_EDITS):
            error = assert_error(gateway.poll(path, job_id), 404)
            assert error["error"]["message"] == JOB_NOT_FOUND
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM async_jobs")


def test_refusals_never_answer_500(gw: Gateway) -> None:
    """A sweep of odd inputs: whatever the verdict, the gateway never fails inside."""
    odd: list[dict[str, Any]] = [
        {"json": {"model": None, "messages": None}},
        {"json": {"model": "fake/ok", "messages": [None]}},
        {"json": {"model": "fake/ok", "messages": "hello"}},
        {"json": {"model": "fake/ok", "messages": [{"role": "user"}], "fallbacks": "backup/ok"}},
        {"json": {"model": "fake/ok", "messages": [{"role": "user"}], "fallbacks": [None]}},
        {"json": {"model": "/", "messages": [{"role": "user"}]}},
        {"data": b"\x00\x01\x02", "headers": {"Content-Type": "application/json"}},
        {"data": b"[" * 100_000, "headers": {"Content-Type": "application/json"}},
    ]
    for kwargs in odd:
        response = gw.client.post(gw.url + CHAT, **kwargs)
        assert response.status_code == 400, (kwargs, response.status_code, response.text)
        assert_error(response, 400)


def test_spec_checker_sees_refusals(gw: Gateway) -> None:
    """The answers above were checked against the spec: a 400 body that broke it would raise."""
    response = requests.post(gw.url + CHAT, json=chat("nope"), timeout=10)
    assert response.status_code == 400
    assert set(response.json()) <= {"is_bifrost_error", "status_code", "error", "extra_fields"}


def test_refused_requests_are_not_logged_as_errors(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answers = [
        gateway.submit(CHAT, json={"model": "nope", "messages": "x"}).status_code,
        gateway.submit(
            CHAT, data=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code,
        gateway.poll(CHAT, "not-a-job").status_code,
    ]
    assert answers == [400, 400, 404]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
