"""Which function runs each kind inside a local inference process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asyncgate.worker.local import ocr, speech, text, transcribe, vectors
from asyncgate.worker.local.child import Answer, FileData

Runner = Callable[[dict[str, Any], list[FileData]], Answer]

RUNNERS: dict[str, Runner] = {
    "chat_completion": text.chat_completion,
    "text_completion": text.text_completion,
    "response": text.response,
    "embedding": vectors.embeddings,
    "rerank": vectors.rerank,
    "speech": speech.speech,
    "transcription": transcribe.transcription,
    "ocr": ocr.ocr,
}
