"""A small, real OpenAI-compatible HTTP server for the test suite, benchmark and soak run.

It serves chat/completions, completions, responses, embeddings, audio/speech,
audio/transcriptions and images/{generations,edits,variations} under ``/v1``.

Behaviour is chosen per request by the bare model name (JSON field or multipart form
field ``model``): directives joined by ``+``, e.g. ``status-503+retry-after-2``.

- ``ok`` (or anything unknown): success
- ``status-<code>``: that status (400-599) with an OpenAI-shaped error body
- ``retry-after-<seconds>``: add a ``Retry-After`` header
- ``delay-<seconds>``: sleep (float seconds) before answering; a client that closes the
  connection meanwhile ends the request there (outcome ``client-closed``, ``closed_at`` set)
- ``bad-json``: 200 ``application/json`` whose body is not valid JSON
- ``nul-answer``: 200, valid JSON holding ``\\u0000``, which PostgreSQL's jsonb cannot store
- ``wrong-content-type``: 200 with a ``text/html`` body
- ``huge-<bytes>``: 200 JSON body of at least that many bytes
- ``drop``: abort the connection without sending a response
- ``fail-first-<n>``: 500 for the first n requests with the same ``X-Asyncgate-Job-Id``

Server-wide settings: ``expected_api_key`` (401 unless ``Authorization: Bearer <key>``),
``latency`` (seconds added to every request) and ``faults`` (a :class:`FaultMix`).
Each request is handled in this order: record it, sleep ``latency``, check the API key,
draw a random fault, then apply the model directives.

Every request is recorded; per-job execution counts (every arrival, whatever its outcome)
and arrival times are also served at ``GET /_upstream/stats`` and cleared by
``POST /_upstream/reset``.

Use :class:`FakeUpstream` inside an event loop, :class:`UpstreamThread` from synchronous
code, or run ``python -m tests.upstream --port 0 --port-file PATH`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import signal
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import MultipartReader, web

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None  # type: ignore[assignment]

JOB_HEADER = "X-Asyncgate-Job-Id"
Payload = dict[str, Any]
AUDIO_TYPES = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "pcm": "audio/pcm",
}
ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
PNG_B64 = (  # a 1x1 RGB image
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNQaPgPAAJjAaB56d6tAAAAAElFTkSuQmCC"
)
_DIRECTIVE = re.compile(r"(status|retry-after|delay|fail-first|huge)-(\d+(?:\.\d+)?)")
_SUCCESSES = ("ok", "huge")
"""Outcomes that are a successful answer (a paid upstream call, for a real provider)."""
_FLAGS = ("bad-json", "nul-answer", "wrong-content-type", "drop")


def _tiny_wav() -> bytes:
    samples = b"\x80" * 16  # 8-bit mono silence at 8 kHz
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8)
    data = b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", 4 + len(fmt) + len(data)) + b"WAVE" + fmt + data


WAV_BYTES = _tiny_wav()


@dataclass(frozen=True)
class FaultMix:
    """Per-request probabilities of a random fault; other requests behave normally."""

    error_500: float = 0.0
    error_429: float = 0.0  # answered with ``Retry-After: 0``
    timeout: float = 0.0  # sleep ``timeout_sleep`` seconds, then answer normally
    drop: float = 0.0
    seed: int | None = None
    timeout_sleep: float = 30.0

    def __post_init__(self) -> None:
        chances = (self.error_500, self.error_429, self.timeout, self.drop)
        if min(chances) < 0 or sum(chances) > 1 or self.timeout_sleep < 0:
            raise ValueError("fault chances must be >= 0 and sum to <= 1; timeout_sleep >= 0")


@dataclass
class RecordedRequest:
    arrival: float  # time.monotonic() when the handler started
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    job_id: str | None
    body: Any = None  # the parsed JSON body
    form: dict[str, str] = field(default_factory=dict)  # multipart text fields
    # uploads: {"field", "filename", "content_type", "size", "sha256"}
    files: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = "pending"  # "ok", "status-503", "fail-first", "drop", "fault-429", ...
    closed_at: float | None = None  # time.monotonic() when the client closed during a delay

    @property
    def model(self) -> str:
        model = self.body.get("model") if isinstance(self.body, dict) else self.form.get("model")
        return "" if model is None else str(model)


@dataclass
class Directives:
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    fail_first: int = 0
    huge: int = 0
    bad_json: bool = False
    nul_answer: bool = False
    wrong_content_type: bool = False
    drop: bool = False


def parse_directives(model: str) -> Directives:
    """Parse ``a+b+c``; a ``provider/`` prefix and malformed tokens are ignored."""
    found = Directives()
    for token in model.rsplit("/", 1)[-1].lower().split("+"):
        if token in _FLAGS:
            setattr(found, token.replace("-", "_"), True)
        elif match := _DIRECTIVE.fullmatch(token):
            name, value = match.group(1).replace("-", "_"), match.group(2)
            if name == "retry_after":
                found.retry_after = value
            elif name == "delay":
                found.delay = float(value)
            elif "." not in value:
                setattr(found, name, int(value))
    if found.status is not None and not 400 <= found.status <= 599:
        found.status = None
    return found


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> web.Response:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": message, "type": kind, "code": code or str(status), "param": param}
    return json_response({"error": error}, status)


class UpstreamError(Exception):
    """Raised by endpoint bodies for invalid requests."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.response = error_response(status, message, param=param)


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _last_user_text(items: Any, param: str) -> str:
    if isinstance(items, str):
        return items
    if not isinstance(items, list) or not items:
        raise UpstreamError(f"'{param}' must be a non-empty list", param)
    users = [m for m in items if isinstance(m, dict) and m.get("role", "user") == "user"]
    return _text_of(users[-1].get("content")) if users else ""


def _as_texts(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]  # a single tokenized input
    if isinstance(value, list) and value:
        return [v if isinstance(v, str) else str(v) for v in value]
    raise UpstreamError(f"'{param}' must be a string or a non-empty list", param)


def _words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


def _count(value: Any, default: int = 1, limit: int = 16) -> int:
    try:
        return max(1, min(int(value), limit))
    except (TypeError, ValueError):
        return default


Build = Callable[[RecordedRequest], "Payload | web.Response"]


class FakeUpstream:
    """The server. Settings are plain attributes and may be changed while it runs."""

    def __init__(
        self,
        *,
        expected_api_key: str | None = None,
        latency: float = 0.0,
        faults: FaultMix | None = None,
        max_records: int = 100_000,
        max_body_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.expected_api_key = expected_api_key
        self.latency = latency
        self.faults = faults  # the random sequence is seeded once, from the initial mix
        self._rng = random.Random(faults.seed if faults else None)
        self.executions: dict[str, int] = {}  # job id -> requests received
        self.successes: dict[str, int] = {}  # job id -> successful answers sent
        self.arrivals: dict[str, list[float]] = {}  # job id -> monotonic arrival times
        self.outcomes: Counter[str] = Counter()
        self.total = 0
        self.host, self.port = "127.0.0.1", 0
        self._records: deque[RecordedRequest] = deque(maxlen=max_records)
        self._anonymous = 0  # requests without a job id (they share one fail-first counter)
        self._seq = 0
        self._app = self._make_app(max_body_size)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self._records)

    def reset(self) -> None:
        self._records.clear()
        self.executions.clear()
        self.successes.clear()
        self.arrivals.clear()
        self.outcomes.clear()
        self.total = self._anonymous = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=1024).start()
        self.host, self.port = host, self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _make_app(self, max_body_size: int) -> web.Application:
        app = web.Application(client_max_size=max_body_size)
        for path, build, multipart in (
            ("chat/completions", self._chat, False),
            ("completions", self._completion, False),
            ("responses", self._response, False),
            ("embeddings", self._embeddings, False),
            ("audio/speech", self._speech, False),
            ("audio/transcriptions", self._transcribe, True),
            ("images/generations", self._generate, False),
            ("images/edits", self._edit, True),
            ("images/variations", self._edit, True),
            ("rerank", self._rerank, False),
            ("ocr", self._ocr, False),
        ):
            app.router.add_post(f"/v1/{path}", self._endpoint(build, multipart))
        app.router.add_get("/_upstream/stats", self._stats)
        app.router.add_post("/_upstream/reset", self._reset)
        return app

    def _endpoint(self, build: Build, multipart: bool) -> Callable[[web.Request], Awaitable[Any]]:
        async def handle(request: web.Request) -> web.Response:
            record = self._record(request)
            outcome, response = await self._respond(request, record, build, multipart)
            record.outcome = outcome
            self.outcomes[outcome] += 1
            if outcome in _SUCCESSES and record.job_id is not None:
                self.successes[record.job_id] = self.successes.get(record.job_id, 0) + 1
            return response

        return handle

    def _record(self, request: web.Request) -> RecordedRequest:
        job_id = request.headers.get(JOB_HEADER)
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = RecordedRequest(time.monotonic(), request.method, request.path, headers, job_id)
        self._records.append(record)
        self.total += 1
        if job_id is None:
            self._anonymous += 1
        else:
            self.executions[job_id] = self.executions.get(job_id, 0) + 1
            self.arrivals.setdefault(job_id, []).append(record.arrival)
        return record

    async def _read_json(self, request: web.Request, record: RecordedRequest) -> None:
        try:
            record.body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(record.body, dict):
            raise UpstreamError("request body must be a JSON object")

    async def _read_form(self, request: web.Request, record: RecordedRequest) -> None:
        if not request.content_type.startswith("multipart/"):
            raise UpstreamError("expected a multipart/form-data body")
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, MultipartReader):
                raise UpstreamError("nested multipart bodies are not supported")
            data = await part.read()
            if part.filename is None:
                record.form[part.name or ""] = data.decode("utf-8", "replace")
            else:
                kind = part.headers.get("Content-Type", "application/octet-stream")
                record.files.append(
                    {
                        "field": part.name or "",
                        "filename": part.filename,
                        "content_type": kind,
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )

    def _draw_fault(self, faults: FaultMix | None) -> str | None:
        if faults is None:
            return None
        roll = self._rng.random()
        for name, chance in (
            ("fault-500", faults.error_500),
            ("fault-429", faults.error_429),
            ("fault-timeout", faults.timeout),
            ("fault-drop", faults.drop),
        ):
            if roll < chance:
                return name
            roll -= chance
        return None

    @staticmethod
    async def _delay(request: web.Request, record: RecordedRequest, seconds: float) -> bool:
        """Sleep ``seconds``; False (and ``closed_at`` set) as soon as the client hangs up."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            transport = request.transport
            if transport is None or transport.is_closing():
                record.closed_at = time.monotonic()
                return False
            await asyncio.sleep(min(left, 0.02))
        return True

    @staticmethod
    def _drop(request: web.Request, outcome: str) -> tuple[str, web.Response]:
        if request.transport is not None:
            request.transport.abort()
        return outcome, web.Response()  # never reaches the client

    async def _respond(
        self, request: web.Request, record: RecordedRequest, build: Build, multipart: bool
    ) -> tuple[str, web.Response]:
        try:
            await (self._read_form if multipart else self._read_json)(request, record)
        except UpstreamError as exc:
            return "bad-request", exc.response
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        key = self.expected_api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return "unauthorized", error_response(
                401, "Incorrect API key provided.", code="invalid_api_key"
            )
        faults = self.faults
        fault = self._draw_fault(faults)
        if fault == "fault-drop":
            return self._drop(request, fault)
        if fault == "fault-500":
            return fault, error_response(500, "simulated upstream fault")
        if fault == "fault-429":
            response = error_response(429, "simulated rate limit")
            response.headers["Retry-After"] = "0"
            return fault, response
        if fault == "fault-timeout" and faults is not None:
            await asyncio.sleep(faults.timeout_sleep)

        directives = parse_directives(record.model)
        if directives.delay > 0 and not await self._delay(request, record, directives.delay):
            return "client-closed", web.Response()  # never reaches the client
        if directives.drop:
            return self._drop(request, "drop")
        outcome, response = self._answer(record, directives, build)
        if directives.retry_after is not None:
            response.headers["Retry-After"] = directives.retry_after
        return fault or outcome, response

    def _answer(
        self, record: RecordedRequest, directives: Directives, build: Build
    ) -> tuple[str, web.Response]:
        if (status := directives.status) is not None:
            return f"status-{status}", error_response(status, f"simulated upstream error {status}")
        job_id = record.job_id
        attempt = self._anonymous if job_id is None else self.executions.get(job_id, 0)
        if directives.fail_first and attempt <= directives.fail_first:
            message = f"simulated upstream error 500 (attempt {attempt} of {directives.fail_first})"
            return "fail-first", error_response(500, message)
        if directives.bad_json:
            body = b'{"id": "chatcmpl-broken", "choices": ['
            return "bad-json", web.Response(body=body, content_type="application/json")
        if directives.nul_answer:
            body = b'{"id": "chatcmpl-nul", "choices": [], "note": "a\\u0000b"}'
            return "nul-answer", web.Response(body=body, content_type="application/json")
        if directives.wrong_content_type:
            html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return "wrong-content-type", web.Response(text=html, content_type="text/html")
        try:
            result = build(record)
        except UpstreamError as exc:
            return "bad-request", exc.response
        if isinstance(result, web.Response):
            return "ok", result
        if directives.huge > 0:
            result["padding"] = "x" * directives.huge
        return "huge" if directives.huge else "ok", json_response(result)

    async def _stats(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "requests": self.total,
                "executions": self.executions,
                "successes": self.successes,
                "arrivals": self.arrivals,
                "outcomes": dict(self.outcomes),
            }
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"reset": True})

    # Endpoint bodies: each returns a JSON payload or a ready response.

    def _new_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:012x}"

    def _chat(self, record: RecordedRequest) -> Payload:
        messages = record.body.get("messages")
        text = _last_user_text(messages, "messages")
        prompt = _words(*(_text_of(m.get("content")) for m in messages if isinstance(m, dict)))
        message = {"role": "assistant", "content": text, "refusal": None}
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": "stop"}
            for i in range(_count(record.body.get("n")))
        ]
        completion = _words(text) * len(choices)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "model": record.model,
            "created": int(time.time()),
            "choices": choices,
            "usage": usage,
        }

    def _completion(self, record: RecordedRequest) -> Payload:
        prompts = _as_texts(record.body.get("prompt"), "prompt")
        choices = [
            {"index": i, "text": p, "logprobs": None, "finish_reason": "stop"}
            for i, p in enumerate(prompts)
        ]
        n = _words(*prompts)
        usage = {"prompt_tokens": n, "completion_tokens": n, "total_tokens": 2 * n}
        return {
            "id": self._new_id("cmpl"),
            "object": "text_completion",
            "model": record.model,
            "created": int(time.time()),
            "choices": choices,
            "usage": usage,
        }

    def _response(self, record: RecordedRequest) -> Payload:
        text = _last_user_text(record.body.get("input"), "input")
        content = [{"type": "output_text", "text": text, "annotations": []}]
        output = [
            {
                "type": "message",
                "id": self._new_id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": content,
            }
        ]
        n = _words(text)
        return {
            "id": self._new_id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": record.model,
            "output": output,
            "error": None,
            "usage": {"input_tokens": n, "output_tokens": n, "total_tokens": 2 * n},
        }

    def _embeddings(self, record: RecordedRequest) -> Payload:
        texts = _as_texts(record.body.get("input"), "input")
        dims = _count(record.body.get("dimensions"), default=8, limit=4096)
        vectors = [
            [round(b / 127.5 - 1, 4) for b in hashlib.shake_256(t.encode()).digest(dims)]
            for t in texts
        ]  # deterministic, in [-1, 1]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        n = _words(*texts)
        return {
            "object": "list",
            "data": data,
            "model": record.model,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    def _speech(self, record: RecordedRequest) -> web.Response:
        if not isinstance(record.body.get("input"), str):
            raise UpstreamError("'input' must be a string", "input")
        fmt = record.body.get("response_format") or "mp3"
        if fmt not in AUDIO_TYPES:
            raise UpstreamError(f"unsupported response_format {fmt!r}", "response_format")
        return web.Response(body=WAV_BYTES, content_type=AUDIO_TYPES[fmt])

    def _transcribe(self, record: RecordedRequest) -> Payload:
        upload = next((f for f in record.files if f["field"] == "file"), None)
        if upload is None:
            raise UpstreamError("a 'file' upload is required", "file")
        return {
            "text": f"Transcript of {upload['filename']} ({upload['size']} bytes).",
            "usage": {"type": "duration", "seconds": 1},
        }

    def _images(self, count: Any) -> Payload:
        return {"created": int(time.time()), "data": [{"b64_json": PNG_B64}] * _count(count)}

    def _generate(self, record: RecordedRequest) -> Payload:
        if not isinstance(record.body.get("prompt"), str):
            raise UpstreamError("'prompt' must be a string", "prompt")
        return self._images(record.body.get("n"))

    def _edit(self, record: RecordedRequest) -> Payload:
        if not any(f["field"] in ("image", "image[]") for f in record.files):
            raise UpstreamError("an 'image' upload is required", "image")
        payload = self._images(record.form.get("n"))
        payload["received"] = {"files": record.files, "fields": record.form}
        return payload

    def _rerank(self, record: RecordedRequest) -> Payload:
        """Scores by shared words with the query, so the order is predictable."""
        query = record.body.get("query")
        documents = record.body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list) or not documents:
            raise UpstreamError("'query' and a non-empty 'documents' are required", "documents")
        wanted = set(query.lower().split())
        texts = [d.get("text", "") if isinstance(d, dict) else str(d) for d in documents]
        scores = [len(wanted & set(t.lower().split())) / (1 + len(wanted)) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))
        top_n = _count(record.body.get("top_n"), default=len(texts), limit=len(texts))
        results = []
        for i in order[:top_n]:
            result: dict[str, Any] = {"index": i, "relevance_score": round(scores[i], 4)}
            if record.body.get("return_documents"):
                result["document"] = {"text": texts[i]}
            results.append(result)
        return {
            "id": self._new_id("rerank"),
            "results": results,
            "model": record.model,
            "usage": {"search_units": 1},
        }

    def _ocr(self, record: RecordedRequest) -> Payload:
        document = record.body.get("document")
        if not isinstance(document, dict) or document.get("type") not in (
            "document_url",
            "image_url",
        ):
            raise UpstreamError("'document' must be a document_url or image_url", "document")
        url = str(document.get(document["type"], ""))
        pages = [
            {
                "index": 0,
                "markdown": f"# Page read from a {document['type']} of {len(url)} characters",
                "images": [],
                "dimensions": {"dpi": 200, "height": 2200, "width": 1700},
            }
        ]
        return {"model": record.model, "pages": pages, "usage_info": {"pages_processed": 1}}


def _setting(name: str) -> Any:
    return property(
        lambda self: getattr(self.server, name),
        lambda self, value: setattr(self.server, name, value),
    )


class UpstreamThread:
    """A :class:`FakeUpstream` on its own event loop in a background thread.

    Other attributes (``url``, ``port``, ``requests``, ``executions``, ``reset()``, ...)
    are those of ``self.server``.
    """

    latency = _setting("latency")
    faults = _setting("faults")
    expected_api_key = _setting("expected_api_key")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        self.server = FakeUpstream(**settings)
        self._address = (host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="upstream", daemon=True)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "server":
            raise AttributeError(name)
        return getattr(self.server, name)

    def start(self) -> UpstreamThread:
        self._thread.start()
        try:
            self._call(self.server.start(*self._address))
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self.server.stop())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)

    def __enter__(self) -> UpstreamThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for future in pending:
                future.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM/SIGINT; write the bound port to ``args.port_file`` once listening."""
    chances = (args.fault_500, args.fault_429, args.fault_timeout, args.fault_drop)
    faults = FaultMix(*chances, args.seed, args.timeout_sleep) if any(chances) else None
    server = FakeUpstream(expected_api_key=args.api_key, latency=args.latency, faults=faults)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await server.start(args.host, args.port)
    try:
        if args.port_file:
            with open(f"{args.port_file}.partial", "w") as handle:
                handle.write(f"{server.port}\n")
            os.replace(f"{args.port_file}.partial", args.port_file)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.upstream", description="Run the fake OpenAI-compatible upstream."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer <key>'")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    for name in ("500", "429", "timeout", "drop"):
        parser.add_argument(f"--fault-{name}", type=float, default=0.0, help="probability")
    parser.add_argument("--timeout-sleep", type=float, default=30.0)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    (uvloop.run if uvloop is not None else asyncio.run)(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
