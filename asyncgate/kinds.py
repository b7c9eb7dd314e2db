"""The kinds of inference job: the one table that says what each kind is.

A kind's line names its submit and poll operations in the spec (its cancel operation follows
from the poll's name), its submit path (poll is that path plus ``/{job_id}``, cancel that plus
``/cancel``), the path appended to a provider's base URL, how its body arrives, which files it
needs, what counts as a streaming request, how its fallbacks are written and what its result
is. The operations are bound from this table (:mod:`asyncgate.handlers.operations`), the
database's CHECK constraint lists its values, and a test keeps the three in agreement.
"""

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
    RERANK = "rerank"
    OCR = "ocr"


class Body(enum.Enum):
    """How a kind's request arrives."""

    JSON = "application/json"
    MULTIPART = "multipart/form-data"


class Fallbacks(enum.Enum):
    """How a kind's ``fallbacks`` are written by clients."""

    NAMES = "names"
    """``["provider/model", ...]``"""
    OBJECTS = "objects"
    """``[{"provider": ..., "model": ...}, ...]`` (image kinds; names are accepted too)."""


class Result(enum.Enum):
    """What a kind's upstream answers, and so how the result is stored and shown."""

    JSON = "json"
    """A JSON document, stored and returned as it came."""
    AUDIO = "audio"
    """Audio bytes, stored raw and returned as ``{"audio": <base64>, "content_type": ...}``."""
    TRANSCRIPT = "transcript"
    """JSON, or plain text / subtitles (``response_format`` text, srt, vtt) as ``{"text": ...}``."""


@dataclass(frozen=True, slots=True)
class StreamRule:
    """A body field whose value asks for a stream, which a job cannot give: such a request is
    refused with 400 and ``message``."""

    field: str
    values: tuple[object, ...]
    message: str


STREAM = StreamRule(
    "stream",
    (True, "true", "True", "1"),
    "streaming is not supported for async requests; omit stream",
)
SPEECH_SSE = StreamRule(
    "stream_format",
    ("sse",),
    "stream_format 'sse' is not supported for async requests; use 'audio'",
)


@dataclass(frozen=True, slots=True)
class KindInfo:
    """Everything the gateway needs to know about one kind, from the spec to the upstream.

    ``required_files`` lists form fields of which at least one must carry an uploaded file
    (the spec declares them binary, but a plain text part of the same name passes it; Connexion
    hands ``image[]`` parts over as ``image``).
    """

    kind: Kind
    submit_operation: str
    poll_operation: str
    path: str
    upstream_path: str
    body: Body = Body.JSON
    required_files: tuple[str, ...] = ()
    streaming: tuple[StreamRule, ...] = (STREAM,)
    fallbacks: Fallbacks = Fallbacks.NAMES
    result: Result = Result.JSON
    openai_route: bool = False
    """Whether the kind is also served at its OpenAI-style routes (header mode)."""

    @property
    def openai_paths(self) -> tuple[str, ...]:
        """The kind's OpenAI-style routes, ``/openai/v1`` and ``/openai`` before its upstream
        path; empty unless ``openai_route``."""
        if not self.openai_route:
            return ()
        return (f"/openai/v1{self.upstream_path}", f"/openai{self.upstream_path}")

    @property
    def openai_operations(self) -> tuple[str, ...]:
        """``createAsyncChatCompletion`` -> ``openaiChatCompletion`` and
        ``openaiChatCompletionUnversioned``, one per entry of :attr:`openai_paths`."""
        if not self.openai_route:
            return ()
        name = "openai" + self.submit_operation.removeprefix("createAsync")
        return (name, name + "Unversioned")

    @property
    def multipart(self) -> bool:
        return self.body is Body.MULTIPART

    @property
    def cancel_operation(self) -> str:
        """``getAsyncChatCompletionJob`` -> ``cancelAsyncChatCompletionJob``."""
        return "cancel" + self.poll_operation.removeprefix("get")

    @property
    def cancel_path(self) -> str:
        return f"{self.path}/{{job_id}}/cancel"


KINDS: dict[Kind, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(
            Kind.TEXT_COMPLETION,
            "createAsyncTextCompletion",
            "getAsyncTextCompletionJob",
            "/v1/async/completions",
            "/completions",
            openai_route=True,
        ),
        KindInfo(
            Kind.CHAT_COMPLETION,
            "createAsyncChatCompletion",
            "getAsyncChatCompletionJob",
            "/v1/async/chat/completions",
            "/chat/completions",
            openai_route=True,
        ),
        KindInfo(
            Kind.RESPONSE,
            "createAsyncResponse",
            "getAsyncResponseJob",
            "/v1/async/responses",
            "/responses",
            openai_route=True,
        ),
        KindInfo(
            Kind.EMBEDDING,
            "createAsyncEmbedding",
            "getAsyncEmbeddingJob",
            "/v1/async/embeddings",
            "/embeddings",
            openai_route=True,
        ),
        KindInfo(
            Kind.SPEECH,
            "createAsyncSpeech",
            "getAsyncSpeechJob",
            "/v1/async/audio/speech",
            "/audio/speech",
            streaming=(STREAM, SPEECH_SSE),
            result=Result.AUDIO,
        ),
        KindInfo(
            Kind.TRANSCRIPTION,
            "createAsyncTranscription",
            "getAsyncTranscriptionJob",
            "/v1/async/audio/transcriptions",
            "/audio/transcriptions",
            body=Body.MULTIPART,
            required_files=("file",),
            result=Result.TRANSCRIPT,
        ),
        KindInfo(
            Kind.IMAGE_GENERATION,
            "createAsyncImageGeneration",
            "getAsyncImageGenerationJob",
            "/v1/async/images/generations",
            "/images/generations",
            fallbacks=Fallbacks.OBJECTS,
        ),
        KindInfo(
            Kind.IMAGE_EDIT,
            "createAsyncImageEdit",
            "getAsyncImageEditJob",
            "/v1/async/images/edits",
            "/images/edits",
            body=Body.MULTIPART,
            required_files=("image", "image[]"),
            fallbacks=Fallbacks.OBJECTS,
        ),
        KindInfo(
            Kind.IMAGE_VARIATION,
            "createAsyncImageVariation",
            "getAsyncImageVariationJob",
            "/v1/async/images/variations",
            "/images/variations",
            body=Body.MULTIPART,
            required_files=("image",),
            fallbacks=Fallbacks.OBJECTS,
        ),
        KindInfo(
            Kind.RERANK,
            "createAsyncRerank",
            "getAsyncRerankJob",
            "/v1/async/rerank",
            "/rerank",
        ),
        KindInfo(
            Kind.OCR,
            "createAsyncOcr",
            "getAsyncOcrJob",
            "/v1/async/ocr",
            "/ocr",
        ),
    )
}
