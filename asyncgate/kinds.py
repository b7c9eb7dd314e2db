"""The nine kinds of inference job and what each needs to travel from submit to upstream."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    """A job's kind; its value is stored in ``async_jobs.kind`` and reported as ``request_type``."""

    TEXT_COMPLETION = "text_completion"
    CHAT_COMPLETION = "chat_completion"
    RESPONSE = "response"
    EMBEDDING = "embedding"
    SPEECH = "speech"
    TRANSCRIPTION = "transcription"
    IMAGE_GENERATION = "image_generation"
    IMAGE_EDIT = "image_edit"
    IMAGE_VARIATION = "image_variation"


@dataclass(frozen=True, slots=True)
class KindInfo:
    """Routing facts of one kind.

    ``path`` is the gateway's submit path (poll is ``path/{job_id}``); ``upstream_path`` is appended
    to a provider's base URL; ``multipart`` kinds carry uploaded files; ``binary_result`` kinds
    answer with raw bytes (audio) instead of JSON; ``object_fallbacks`` kinds take fallbacks as
    ``{"provider", "model"}`` objects rather than ``"provider/model"`` strings.
    """

    kind: Kind
    path: str
    upstream_path: str
    multipart: bool = False
    binary_result: bool = False
    object_fallbacks: bool = False


KINDS: dict[Kind, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(Kind.TEXT_COMPLETION, "/v1/async/completions", "/completions"),
        KindInfo(Kind.CHAT_COMPLETION, "/v1/async/chat/completions", "/chat/completions"),
        KindInfo(Kind.RESPONSE, "/v1/async/responses", "/responses"),
        KindInfo(Kind.EMBEDDING, "/v1/async/embeddings", "/embeddings"),
        KindInfo(Kind.SPEECH, "/v1/async/audio/speech", "/audio/speech", binary_result=True),
        KindInfo(
            Kind.TRANSCRIPTION,
            "/v1/async/audio/transcriptions",
            "/audio/transcriptions",
            multipart=True,
        ),
        KindInfo(
            Kind.IMAGE_GENERATION,
            "/v1/async/images/generations",
            "/images/generations",
            object_fallbacks=True,
        ),
        KindInfo(
            Kind.IMAGE_EDIT,
            "/v1/async/images/edits",
            "/images/edits",
            multipart=True,
            object_fallbacks=True,
        ),
        KindInfo(
            Kind.IMAGE_VARIATION,
            "/v1/async/images/variations",
            "/images/variations",
            multipart=True,
            object_fallbacks=True,
        ),
    )
}
