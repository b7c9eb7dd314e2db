"""The local provider's models: which kinds each serves and what it refuses, checked at submit.

A provider of ``type = "local"`` runs these models in the worker's own process pool, offline
and without an API key (``pip install 'asyncgate[local]'``). This table is the one place that
says which model serves which kind; :func:`refusal` turns it into the 400 a submit gets.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asyncgate.kinds import Kind

TEXT_KINDS = (Kind.CHAT_COMPLETION, Kind.TEXT_COMPLETION, Kind.RESPONSE)
SPEECH_VOICES = ("heart", "af_heart")
"""The voices bundled with the speech model; any other would have to be downloaded."""
SPEECH_FORMATS = ("wav", "pcm", "mp3", "opus", "aac", "flac")
UNENCODED_SPEECH_FORMATS = ("wav", "pcm")
"""The speech formats written without PyAV (package av), which encodes the others."""
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
EMBEDDING_DIMENSIONS = 384
EXTRA_MODULES = (
    "llama_cpp",
    "onnxruntime",
    "tokenizers",
    "hibari",
    "faster_whisper",
    "rapidocr_onnxruntime",
    "pypdfium2",
    "av",
)
"""What ``asyncgate[local]`` installs; the local provider is the default when all import."""


@dataclass(frozen=True, slots=True)
class LocalModel:
    """One model the local provider runs: its name after ``local/``, the kinds it serves, and
    the package it comes from."""

    name: str
    kinds: tuple[Kind, ...]
    source: str


LOCAL_MODELS: dict[str, LocalModel] = {
    model.name: model
    for model in (
        LocalModel("smollm2-135m-instruct", TEXT_KINDS, "SmolLM2-135M-Instruct Q4_1 GGUF"),
        LocalModel("all-minilm-l6-v2", (Kind.EMBEDDING, Kind.RERANK), "all-MiniLM-L6-v2 int8"),
        LocalModel("hibari", (Kind.SPEECH,), "hibari TTS, voice heart (24 kHz)"),
        LocalModel("whisper-tiny.en", (Kind.TRANSCRIPTION,), "Whisper tiny.en"),
        LocalModel("rapidocr", (Kind.OCR,), "RapidOCR PP-OCRv4"),
    )
}


def served_kinds() -> list[Kind]:
    """Every kind some local model serves, in the kinds table's order."""
    return [kind for kind in Kind if any(kind in m.kinds for m in LOCAL_MODELS.values())]


def available() -> bool:
    """Whether the ``local`` extra is installed (every package it brings can be imported)."""
    return all(importlib.util.find_spec(name) is not None for name in EXTRA_MODULES)


@functools.cache
def speech_formats() -> tuple[str, ...]:
    """The speech formats this installation writes: all of them when PyAV can be imported."""
    return SPEECH_FORMATS if importlib.util.find_spec("av") else UNENCODED_SPEECH_FORMATS


def refusal(kind: Kind, model: str, body: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(message, param)`` of why the local ``model`` (bare name) cannot run this request, or
    None when it can."""
    if kind not in served_kinds():
        names = ", ".join(k.value for k in served_kinds())
        return f"the local provider does not serve {kind.value} jobs; it serves {names}", "model"
    info = LOCAL_MODELS.get(model)
    if info is None or kind not in info.kinds:
        names = ", ".join(f"local/{m.name}" for m in LOCAL_MODELS.values() if kind in m.kinds)
        return f"local model {model!r} does not serve {kind.value} jobs; use {names}", "model"
    check = _BODY_CHECKS.get(kind)
    return check(body) if check else None


def _embedding(body: Mapping[str, Any]) -> tuple[str, str] | None:
    given = body.get("input")
    items = given if isinstance(given, list) else [given]
    if not all(isinstance(item, str) for item in items):
        return "local embeddings take text input (a string or a list of strings)", "input"
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != EMBEDDING_DIMENSIONS:
        return f"local embeddings have {EMBEDDING_DIMENSIONS} dimensions", "dimensions"
    return None


def _speech(body: Mapping[str, Any]) -> tuple[str, str] | None:
    if body.get("voice") not in SPEECH_VOICES:
        return f"the local speech model has the voices {', '.join(SPEECH_VOICES)}", "voice"
    if body.get("response_format", "mp3") not in speech_formats():
        return f"local speech formats are {', '.join(speech_formats())}", "response_format"
    return None


def _transcription(body: Mapping[str, Any]) -> tuple[str, str] | None:
    if body.get("language") not in (None, "", "en"):
        return "the local transcription model understands English only (language en)", "language"
    if body.get("response_format", "json") not in TRANSCRIPT_FORMATS:
        return f"local transcript formats are {', '.join(TRANSCRIPT_FORMATS)}", "response_format"
    return None


def _ocr(body: Mapping[str, Any]) -> tuple[str, str] | None:
    document = body.get("document")
    url = ""
    if isinstance(document, Mapping):
        url = str(document.get("document_url") or document.get("image_url") or "")
    if not url.startswith("data:"):
        return "the local OCR model reads data: URLs only (it fetches nothing)", "document"
    return None


_BODY_CHECKS = {
    Kind.EMBEDDING: _embedding,
    Kind.SPEECH: _speech,
    Kind.TRANSCRIPTION: _transcription,
    Kind.OCR: _ocr,
}
