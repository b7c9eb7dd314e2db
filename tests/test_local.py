"""The local provider end to end: a real gateway and real PostgreSQL running the bundled models.

One gateway serves the whole module (the models load once, in its inference process). It has
the local provider and ``down``, a remote provider nothing listens on, for the fallbacks.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
import wave
from collections.abc import Iterator
from typing import Any

import pytest

from asyncgate import local
from asyncgate.config import ProviderConfig
from asyncgate.kinds import Kind
from tests.conftest import Gateway, make_settings, wait_for
from tests.launch import create_database, drop_database, free_port
from tests.spec_check import SpecChecker

# From the local extra: without it the module is skipped, not an error at collection.
np = pytest.importorskip("numpy", reason="the local extra is not installed")
Image = pytest.importorskip("PIL.Image", reason="the local extra is not installed")
ImageDraw = pytest.importorskip("PIL.ImageDraw", reason="the local extra is not installed")
ImageFont = pytest.importorskip("PIL.ImageFont", reason="the local extra is not installed")

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


def embed(gateway: Gateway, texts: list[str], encoding_format: str = "float") -> np.ndarray:
    result = run(
        gateway,
        "/v1/async/embeddings",
        {"model": "local/all-minilm-l6-v2", "input": texts, "encoding_format": encoding_format},
    )
    assert result["usage"]["prompt_tokens"] > len(texts)
    if encoding_format == "base64":
        return np.array(
            [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in result["data"]]
        )
    return np.array([d["embedding"] for d in result["data"]])


def test_embedding_is_closer_to_a_paraphrase_than_to_an_unrelated_sentence(
    gateway: Gateway,
) -> None:
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The soup is too salty."]
    vectors = embed(gateway, texts)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.6 and similar > unrelated + 0.3
    assert np.allclose(embed(gateway, texts, "base64"), vectors, atol=1e-6)


def test_rerank_orders_the_relevant_document_first(gateway: Gateway) -> None:
    documents = [
        "The central bank raised interest rates again.",
        {"text": "Knead the dough, let it rise, then bake the loaf in a hot oven."},
        "Penguins live in the southern hemisphere.",
    ]
    result = run(
        gateway,
        "/v1/async/rerank",
        {
            "model": "local/all-minilm-l6-v2",
            "query": "How do I bake bread at home?",
            "documents": documents,
            "top_n": 2,
            "return_documents": True,
        },
    )
    first, second = result["results"]
    assert first["index"] == 1 and first["document"] == documents[1]
    assert first["relevance_score"] > second["relevance_score"]


SENTENCE = "The quick brown fox jumps over the lazy dog."


def speak(gateway: Gateway, text: str, response_format: str) -> tuple[bytes, str]:
    result = run(
        gateway,
        "/v1/async/audio/speech",
        {
            "model": "local/hibari",
            "input": text,
            "voice": "heart",
            "response_format": response_format,
        },
    )
    return base64.b64decode(result["audio"]), result["content_type"]


def test_speech_is_a_wav_of_plausible_length(gateway: Gateway) -> None:
    audio, content_type = speak(gateway, SENTENCE, "wav")
    assert content_type == "audio/wav"
    with wave.open(io.BytesIO(audio)) as file:
        assert (file.getnchannels(), file.getsampwidth(), file.getframerate()) == (1, 2, 24000)
        seconds = file.getnframes() / file.getframerate()
    assert 1.5 < seconds < 8.0  # nine words
    samples = np.frombuffer(audio[44:], "<i2")
    assert np.abs(samples).max() > 1000  # not silence


def test_speech_formats_and_voices(gateway: Gateway) -> None:
    audio, content_type = speak(gateway, "Hello.", "mp3")
    assert content_type == "audio/mpeg"
    assert audio[:3] == b"ID3" or audio[0] == 0xFF
    audio, content_type = speak(gateway, "Hello.", "flac")
    assert (content_type, audio[:4]) == ("audio/flac", b"fLaC")
    refused = gateway.submit(
        "/v1/async/audio/speech", {"model": "local/hibari", "input": "Hi", "voice": "alloy"}
    )
    assert refused.status_code == 400 and "heart" in refused.json()["error"]["message"]


def transcribe(gateway: Gateway, audio: bytes, response_format: str) -> dict[str, Any]:
    return run(
        gateway,
        "/v1/async/audio/transcriptions",
        data={"model": "local/whisper-tiny.en", "response_format": response_format},
        files={"file": ("speech.wav", audio, "audio/wav")},
    )


def test_transcription_of_synthesised_speech_holds_its_words(gateway: Gateway) -> None:
    audio, _ = speak(gateway, SENTENCE + " Seven ships sailed into the harbour.", "wav")
    result = transcribe(gateway, audio, "json")
    words = result["text"].lower()
    for word in ("quick", "brown", "fox", "lazy", "dog", "ships"):
        assert word in words
    assert result["usage"] == {"type": "duration", "seconds": pytest.approx(6, abs=3)}
    verbose = transcribe(gateway, audio, "verbose_json")
    assert len(verbose["segments"]) >= 1 and verbose["segments"][-1]["end"] > 2
    srt = transcribe(gateway, audio, "srt")["text"]
    assert srt.startswith("1\n00:00:00,000 --> ") and "fox" in srt
    vtt = transcribe(gateway, audio, "vtt")["text"]
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert "fox" in transcribe(gateway, audio, "text")["text"]


def rendered(text: str, image_format: str) -> bytes:
    image = Image.new("RGB", (900, 200), "white")
    ImageDraw.Draw(image).text((40, 60), text, fill="black", font=ImageFont.load_default(56))
    out = io.BytesIO()
    image.save(out, image_format)
    return out.getvalue()


@pytest.mark.parametrize(
    ("kind", "image_format", "media_type"),
    [("image_url", "PNG", "image/png"), ("document_url", "PDF", "application/pdf")],
)
def test_ocr_reads_rendered_text(
    gateway: Gateway, kind: str, image_format: str, media_type: str
) -> None:
    data = rendered("Invoice 4217 paid", image_format)
    url = f"data:{media_type};base64,{base64.b64encode(data).decode()}"
    result = run(
        gateway,
        "/v1/async/ocr",
        {"model": "local/rapidocr", "document": {"type": kind, kind: url}},
    )
    (page,) = result["pages"]
    assert "Invoice 4217" in page["markdown"] and "paid" in page["markdown"]
    assert result["usage_info"] == {"pages_processed": 1, "doc_size_bytes": len(data)}


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


def test_a_cancelled_generation_stops_and_frees_the_process(gateway: Gateway) -> None:
    text = "/v1/async/completions"
    long = gateway.submit(
        text,
        {
            "model": "local/smollm2-135m-instruct",
            "prompt": "1, 2, 3, 4, 5, 6, 7, 8,",  # the model counts on to max_tokens
            "max_tokens": 1800,
        },
    )
    job = long.json()["id"]
    wait_for(lambda: gateway.poll(text, job).json()["status"] == "processing", timeout=30)
    time.sleep(1.0)  # generating
    assert gateway.client.post(f"{gateway.url}{text}/{job}/cancel").status_code == 200
    started = time.monotonic()
    result = run(
        gateway,
        CHAT,
        {
            "model": "local/smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
        },
    )
    assert result["usage"]["completion_tokens"] > 0
    assert time.monotonic() - started < 15  # the 1800 tokens alone would take over a minute


def test_speech_formats_without_pyav_are_refused_naming_the_ones_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local.speech_formats.cache_clear()
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None)
    try:
        body = {"voice": "heart", "response_format": "mp3"}
        assert local.refusal(Kind.SPEECH, "hibari", body) == (
            "local speech formats are wav, pcm",
            "response_format",
        )
        assert local.refusal(Kind.SPEECH, "hibari", {**body, "response_format": "wav"}) is None
    finally:
        local.speech_formats.cache_clear()


def test_a_local_job_past_its_deadline_fails_and_frees_the_process(gateway: Gateway) -> None:
    text = "/v1/async/completions"
    long = gateway.submit(
        text,
        {"model": "local/smollm2-135m-instruct", "prompt": "1, 2, 3, 4,", "max_tokens": 1800},
        headers={"x-bf-async-timeout": "3"},
    )
    job = gateway.wait_terminal(text, long.json()["id"], timeout=30)
    assert (job["status"], job["status_code"]) == ("failed", 504)
    assert job["error"]["error"]["type"] == "job_deadline_exceeded"
    started = time.monotonic()
    run(gateway, text, {"model": "local/smollm2-135m-instruct", "prompt": "Hi", "max_tokens": 2})
    assert time.monotonic() - started < 15
