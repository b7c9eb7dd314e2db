"""Every kind of job through the real gateway: submit -> worker -> upstream -> poll.

Each test submits with a virtual key, so the checks also show that the upstream receives the
provider key and never the caller's key.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import UPSTREAM_KEY, Gateway, wait_for
from tests.helpers import (
    CHAT,
    EMBEDDINGS,
    IMAGE_EDITS,
    IMAGE_GENERATIONS,
    IMAGE_VARIATIONS,
    OCR,
    RERANK,
    RESPONSES,
    SPEECH,
    TEXT,
    TRANSCRIPTIONS,
    create_key,
    for_job,
    parse_time,
)
from tests.upstream import PNG_B64, WAV_BYTES, RecordedRequest, UpstreamThread

AUDIO = bytes(range(256)) * 9
IMAGE_A = base64.b64decode(PNG_B64)
IMAGE_B = IMAGE_A + b"second image"
MASK = b"\x89PNG mask bytes"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Flow:
    """One job run through the gateway with a fresh virtual key, and what the upstream saw."""

    def __init__(
        self, gateway: Gateway, upstream: UpstreamThread, database_url: str, path: str
    ) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.path = path
        self.key = create_key(database_url, f"kinds-{uuid.uuid4().hex[:8]}")
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def run(self, **request: Any) -> tuple[dict[str, Any], RecordedRequest]:
        """Submit (``json=`` or ``files=``/``data=``), check the envelopes, wait for the end."""
        response = self.gateway.client.post(
            self.gateway.url + self.path, headers=self.auth, **request
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert set(accepted) == {"id", "status", "created_at"}
        assert accepted["status"] == "pending"
        job_id = str(uuid.UUID(accepted["id"]))
        assert response.headers["Location"] == f"{self.path}/{job_id}"
        created = parse_time(accepted["created_at"])

        done = self.gateway.wait_terminal(self.path, job_id, headers=self.auth)
        assert done["status"] == "completed", done
        assert set(done) == {
            "id",
            "status",
            "created_at",
            "completed_at",
            "expires_at",
            "status_code",
            "result",
        }
        assert done["id"] == job_id
        assert parse_time(done["created_at"]) == created
        completed = parse_time(done["completed_at"])
        assert completed >= created
        assert parse_time(done["expires_at"]) - completed == timedelta(seconds=3600)
        assert done["status_code"] == 200
        assert isinstance(done["result"], dict)

        seen = for_job(self.upstream, job_id)
        assert len(seen) == 1, [r.outcome for r in seen]
        record = seen[0]
        assert record.outcome == "ok"
        assert record.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert not any(self.key in value for value in record.headers.values())
        fields = record.body if isinstance(record.body, dict) else record.form
        assert "fallbacks" not in fields
        assert "stream" not in fields
        return done["result"], record


@pytest.fixture
def flow(gateway: Gateway, upstream: UpstreamThread, database_url: str) -> Callable[[str], Flow]:
    return lambda path: Flow(gateway, upstream, database_url, path)


def test_chat_completion(flow: Callable[[str], Flow]) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
    ]
    result, seen = flow(CHAT).run(
        json={
            "model": "fake/ok",
            "messages": messages,
            "temperature": 0.5,
            "n": 2,
            "fallbacks": ["backup/ok"],
            "stream": False,
            "x_vendor_option": {"depth": [1, 2, 3]},
        }
    )
    assert seen.path == "/v1/chat/completions"
    assert seen.body == {
        "model": "ok",
        "messages": messages,
        "temperature": 0.5,
        "n": 2,
        "x_vendor_option": {"depth": [1, 2, 3]},
    }
    assert [c["message"]["content"] for c in result["choices"]] == ["hello there"] * 2
    assert result["object"] == "chat.completion"


@pytest.mark.parametrize(
    ("prompt", "texts"),
    [("once upon a time", ["once upon a time"]), (["first", "second prompt"], None)],
    ids=["string", "list"],
)
def test_text_completion(
    flow: Callable[[str], Flow], prompt: str | list[str], texts: list[str] | None
) -> None:
    result, seen = flow(TEXT).run(
        json={"model": "fake/ok", "prompt": prompt, "max_tokens": 5, "custom_flag": True}
    )
    assert seen.path == "/v1/completions"
    assert seen.body == {"model": "ok", "prompt": prompt, "max_tokens": 5, "custom_flag": True}
    assert [c["text"] for c in result["choices"]] == (texts or prompt)


def test_responses(flow: Callable[[str], Flow]) -> None:
    result, seen = flow(RESPONSES).run(
        json={
            "model": "fake/ok",
            "input": "tell me a story",
            "instructions": "short",
            "metadata": {"ticket": "42"},
        }
    )
    assert seen.path == "/v1/responses"
    assert seen.body == {
        "model": "ok",
        "input": "tell me a story",
        "instructions": "short",
        "metadata": {"ticket": "42"},
    }
    assert result["object"] == "response"
    assert result["output"][0]["content"][0]["text"] == "tell me a story"


@pytest.mark.parametrize(
    ("embedding_input", "vectors"),
    [
        ("a single text", 1),
        (["one", "two", "three"], 3),
        ([101, 2023, 102], 1),
        ([[101, 7], [102]], 2),
    ],
    ids=["string", "strings", "tokens", "token-lists"],
)
def test_embeddings(flow: Callable[[str], Flow], embedding_input: Any, vectors: int) -> None:
    result, seen = flow(EMBEDDINGS).run(
        json={"model": "fake/ok", "input": embedding_input, "dimensions": 4}
    )
    assert seen.path == "/v1/embeddings"
    assert seen.body == {"model": "ok", "input": embedding_input, "dimensions": 4}
    assert [d["index"] for d in result["data"]] == list(range(vectors))
    assert all(len(d["embedding"]) == 4 for d in result["data"])


def test_speech(flow: Callable[[str], Flow]) -> None:
    result, seen = flow(SPEECH).run(
        json={
            "model": "fake/ok",
            "input": "good morning",
            "voice": "alloy",
            "response_format": "wav",
            "stream_format": "audio",
        }
    )
    assert seen.path == "/v1/audio/speech"
    assert seen.body == {
        "model": "ok",
        "input": "good morning",
        "voice": "alloy",
        "response_format": "wav",
        "stream_format": "audio",
    }
    assert set(result) == {"audio", "content_type"}
    assert result["content_type"] == "audio/wav"
    assert base64.b64decode(result["audio"]) == WAV_BYTES


def test_transcription(flow: Callable[[str], Flow]) -> None:
    result, seen = flow(TRANSCRIPTIONS).run(
        files={"file": ("meeting.wav", AUDIO, "audio/wav")},
        data={
            "model": "fake/ok",
            "language": "en",
            "temperature": "0.2",
            "fallbacks": ["backup/ok"],
            "x_diarize": "yes",
        },
    )
    assert seen.path == "/v1/audio/transcriptions"
    assert seen.form == {"model": "ok", "language": "en", "temperature": "0.2", "x_diarize": "yes"}
    assert seen.files == [
        {
            "field": "file",
            "filename": "meeting.wav",
            "content_type": "audio/wav",
            "size": len(AUDIO),
            "sha256": sha(AUDIO),
        }
    ]
    assert result["text"] == f"Transcript of meeting.wav ({len(AUDIO)} bytes)."


def test_image_generation(flow: Callable[[str], Flow]) -> None:
    result, seen = flow(IMAGE_GENERATIONS).run(
        json={
            "model": "fake/ok",
            "prompt": "a lighthouse at dusk",
            "n": 2,
            "size": "256x256",
            "fallbacks": [{"provider": "backup", "model": "ok"}],
            "moderation": "low",
        }
    )
    assert seen.path == "/v1/images/generations"
    assert seen.body == {
        "model": "ok",
        "prompt": "a lighthouse at dusk",
        "n": 2,
        "size": "256x256",
        "moderation": "low",
    }
    assert [d["b64_json"] for d in result["data"]] == [PNG_B64, PNG_B64]


def test_image_edit_with_image_and_mask(flow: Callable[[str], Flow]) -> None:
    result, seen = flow(IMAGE_EDITS).run(
        files=[
            ("image", ("photo.png", IMAGE_A, "image/png")),
            ("mask", ("mask.png", MASK, "image/png")),
        ],
        data={"model": "fake/ok", "prompt": "add a hat", "size": "256x256"},
    )
    assert seen.path == "/v1/images/edits"
    assert seen.form == {"model": "ok", "prompt": "add a hat", "size": "256x256"}
    assert [(f["field"], f["filename"], f["sha256"]) for f in seen.files] == [
        ("image", "photo.png", sha(IMAGE_A)),
        ("mask", "mask.png", sha(MASK)),
    ]
    assert result["data"] == [{"b64_json": PNG_B64}]


def test_image_edit_with_two_images(flow: Callable[[str], Flow]) -> None:
    result, seen = flow(IMAGE_EDITS).run(
        files=[
            ("image[]", ("first.png", IMAGE_A, "image/png")),
            ("image[]", ("second.png", IMAGE_B, "image/png")),
            ("mask", ("mask.png", MASK, "image/png")),
        ],
        data={"model": "fake/ok", "prompt": "combine them", "n": "3"},
    )
    assert seen.form == {"model": "ok", "prompt": "combine them", "n": "3"}
    assert [(f["filename"], f["content_type"], f["size"], f["sha256"]) for f in seen.files] == [
        ("first.png", "image/png", len(IMAGE_A), sha(IMAGE_A)),
        ("second.png", "image/png", len(IMAGE_B), sha(IMAGE_B)),
        ("mask.png", "image/png", len(MASK), sha(MASK)),
    ]
    assert [f["field"] for f in seen.files] == ["image[]", "image[]", "mask"]
    assert len(result["data"]) == 3


def test_image_variation(flow: Callable[[str], Flow]) -> None:
    result, seen = flow(IMAGE_VARIATIONS).run(
        files={"image": ("source.png", IMAGE_A, "image/png")},
        data={"model": "fake/ok", "n": "2", "response_format": "b64_json"},
    )
    assert seen.path == "/v1/images/variations"
    assert seen.form == {"model": "ok", "n": "2", "response_format": "b64_json"}
    assert [(f["field"], f["sha256"]) for f in seen.files] == [("image", sha(IMAGE_A))]
    assert len(result["data"]) == 2


def test_rerank(flow: Callable[[str], Flow]) -> None:
    documents = [
        "the cat sat on the mat",
        {"text": "asyncgate runs jobs", "id": "doc-2", "meta": {"source": "readme"}},
        "jobs run in the background",
    ]
    result, seen = flow(RERANK).run(
        json={
            "model": "fake/rank-1",
            "query": "background jobs",
            "documents": documents,
            "top_n": 2,
            "return_documents": True,
            "max_tokens_per_doc": 512,
            "fallbacks": ["backup/rank-1"],
            "x_vendor_option": True,
        }
    )
    assert seen.path == "/v1/rerank"
    assert seen.body["model"] == "rank-1"
    assert seen.body["documents"] == documents
    assert seen.body["x_vendor_option"] is True
    assert [r["index"] for r in result["results"]] == [2, 1]
    assert result["results"][0]["document"] == {"text": "jobs run in the background"}
    assert result["results"][0]["relevance_score"] > result["results"][1]["relevance_score"]


@pytest.mark.parametrize(
    "document",
    [
        {"type": "document_url", "document_url": "https://example.com/report.pdf"},
        {"type": "image_url", "image_url": "data:image/png;base64," + PNG_B64},
    ],
    ids=["document_url", "image_url"],
)
def test_ocr(flow: Callable[[str], Flow], document: dict[str, str]) -> None:
    result, seen = flow(OCR).run(
        json={
            "model": "fake/ocr-latest",
            "document": document,
            "pages": [0],
            "include_image_base64": False,
            "table_format": "markdown",
        }
    )
    assert seen.path == "/v1/ocr"
    assert seen.body["model"] == "ocr-latest"
    assert seen.body["document"] == document
    assert result["pages"][0]["index"] == 0
    assert document["type"] in result["pages"][0]["markdown"]
    assert result["usage_info"] == {"pages_processed": 1}


def test_unfinished_job_polls_202_with_retry_after(
    gateway: Gateway, upstream: UpstreamThread
) -> None:
    response = gateway.submit(CHAT, {"model": "fake/delay-1", "messages": [{"role": "user"}]})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def running() -> bool:
        return bool(for_job(upstream, job_id))

    wait_for(running, timeout=10)
    polled = gateway.poll(CHAT, job_id)
    assert polled.status_code == 202
    assert polled.headers["Retry-After"] == "1"
    assert set(polled.json()) == {"id", "status", "created_at"}
    assert polled.json()["status"] in ("pending", "processing")
    assert gateway.wait_terminal(CHAT, job_id)["status"] == "completed"
