"""The local provider's models: throughput per kind and the memory they take.

    .venv/bin/python -m bench.local [--jobs 5] [--processes 1] [--out bench/results]

Runs ``--jobs`` jobs of each kind, one after another, through the worker's own local process
pool (what a job runs after it is claimed; the database is not involved), after one warm-up job
per kind that loads its model. Reported per kind: jobs/s, and tokens/s (chat: generated tokens;
embeddings and rerank: tokens read), real-time factor (speech: seconds of audio made per second;
transcription: seconds of audio heard per second) or pages/s (OCR). Then the peak resident memory
(VmHWM) of the inference process, with every model loaded, and of this process. The figures go
to ``local.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncgate.kinds import Kind
from asyncgate.models.jobs import NewFile
from asyncgate.worker.local import LocalPool
from asyncgate.worker.upstream import UpstreamReply

TEXT = "The quick brown fox jumps over the lazy dog. Seven ships sailed into the harbour at dawn."


def _peak_rss_mb(pid: int | str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as file:
        return file.getnframes() / file.getframerate()


def _picture() -> str:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (1200, 400), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(40)
    for line, words in enumerate(("Invoice 4217", "Paid on 2 December", "Total 129.50 EUR")):
        draw.text((40, 40 + 110 * line), words, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


Case = tuple[Kind, dict[str, Any], list[NewFile], Callable[[UpstreamReply], float], str]


def cases(speech_wav: bytes) -> list[Case]:
    """(kind, body, files, amount of work in a reply, unit of that amount)."""

    def usage_tokens(reply: UpstreamReply) -> float:
        return float(reply.result["usage"]["total_tokens"])

    return [
        (
            Kind.CHAT_COMPLETION,
            {
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "Write two sentences about the sea."}],
                "max_tokens": 64,
            },
            [],
            lambda r: r.result["usage"]["completion_tokens"],
            "generated tokens/s",
        ),
        (
            Kind.EMBEDDING,
            {"model": "all-minilm-l6-v2", "input": [TEXT] * 16},
            [],
            usage_tokens,
            "tokens/s",
        ),
        (
            Kind.RERANK,
            {"model": "all-minilm-l6-v2", "query": "ships at dawn", "documents": [TEXT] * 16},
            [],
            usage_tokens,
            "tokens/s",
        ),
        (
            Kind.SPEECH,
            {"model": "hibari", "input": TEXT, "voice": "heart", "response_format": "wav"},
            [],
            lambda r: _wav_seconds(r.body or b""),
            "x real time",
        ),
        (
            Kind.TRANSCRIPTION,
            {"model": "whisper-tiny.en"},
            [NewFile("file", "speech.wav", "audio/wav", speech_wav)],
            lambda r: _wav_seconds(speech_wav),
            "x real time",
        ),
        (
            Kind.OCR,
            {"model": "rapidocr", "document": {"type": "image_url", "image_url": _picture()}},
            [],
            lambda r: r.result["usage_info"]["pages_processed"],
            "pages/s",
        ),
    ]


async def measure(jobs: int, processes: int) -> dict[str, Any]:
    pool = LocalPool(processes)
    try:
        speech = await pool.send(Kind.SPEECH, cases(b"")[3][1], [], timeout=120)
        figures: dict[str, Any] = {}
        for kind, body, files, amount, unit in cases(speech.body or b""):
            await pool.send(kind, body, files, timeout=300)  # loads the model
            started = time.perf_counter()
            done = 0.0
            for _ in range(jobs):
                done += amount(await pool.send(kind, body, files, timeout=300))
            elapsed = time.perf_counter() - started
            figures[kind.value] = {
                "jobs_per_second": round(jobs / elapsed, 2),
                unit: round(done / elapsed, 1),
            }
            print(f"{kind.value:16} {jobs / elapsed:7.2f} jobs/s  {done / elapsed:9.1f} {unit}")
        inference = _pool_pids(pool)
        figures["peak_rss_mb"] = {
            "inference_process": round(max(_peak_rss_mb(pid) for pid in inference), 1),
            "worker_process": round(_peak_rss_mb("self"), 1),
        }
        print(f"peak RSS: {figures['peak_rss_mb']}")
        return figures
    finally:
        await pool.close()


def _pool_pids(pool: LocalPool) -> list[int]:
    """The pool's process ids (concurrent.futures keeps them in a private mapping)."""
    return list(getattr(pool._executor, "_processes", None) or {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    figures = asyncio.run(measure(args.jobs, args.processes))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "local.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
