"""Speech with hibari (voice heart, 24 kHz mono), one sentence at a time; encoded as WAV or raw
PCM directly, as mp3, opus, aac or flac with PyAV."""

from __future__ import annotations

import io
import wave
from typing import Any

import numpy as np

from asyncgate.worker.local.child import Answer, Refused, cached, check_stop

SAMPLE_RATE = 24000
CONTENT_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
}
# response_format -> (container, codec, sample rate the codec takes)
ENCODINGS = {
    "mp3": ("mp3", "libmp3lame", 24000),
    "opus": ("ogg", "libopus", 48000),
    "aac": ("adts", "aac", 24000),
    "flac": ("flac", "flac", 24000),
}


@cached
def _voice() -> Any:
    from hibari import Hibari

    return Hibari(voice="heart")


def synthesise(text: str, speed: float = 1.0) -> np.ndarray:
    """Float32 samples at 24 kHz of ``text`` spoken, the stop flag checked between sentences."""
    parts = []
    for part in _voice().stream(text, speed=speed, seed=0):
        parts.append(part)
        check_stop()
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    """Signed 16-bit little-endian samples."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def wav(samples: np.ndarray) -> bytes:
    """A mono 16-bit WAV file at 24 kHz."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(SAMPLE_RATE)
        file.writeframes(pcm16(samples))
    return out.getvalue()


def encode(samples: np.ndarray, response_format: str) -> bytes:
    """The samples in one of :data:`ENCODINGS`' formats."""
    import av

    container_format, codec, rate = ENCODINGS[response_format]
    out = io.BytesIO()
    with av.open(out, "w", format=container_format) as container:
        stream: Any = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)[None, :],
            format="s16",
            layout="mono",
        )
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(
            format=stream.format.name,
            layout="mono",
            rate=rate,
        )
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def speech(body: dict[str, Any], files: list[Any]) -> Answer:
    """The audio of ``body["input"]`` in ``response_format`` (mp3 when absent, as OpenAI's)."""
    response_format = str(body.get("response_format") or "mp3")
    if response_format not in CONTENT_TYPES:
        raise Refused(f"local speech formats are {', '.join(CONTENT_TYPES)}", "response_format")
    samples = synthesise(str(body.get("input", "")), float(body.get("speed") or 1.0))
    if not samples.size:
        raise Refused("input holds nothing to speak", "input")
    if response_format == "wav":
        data = wav(samples)
    elif response_format == "pcm":
        data = pcm16(samples)
    else:
        data = encode(samples, response_format)
    return Answer(body=data, content_type=CONTENT_TYPES[response_format])
