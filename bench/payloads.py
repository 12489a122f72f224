"""Fixed request and response bodies used by every benchmark row.

The upstream answers are realistic OpenAI Chat Completions bodies (same fields
and sizes as api.openai.com sends), built once so that the direct-response
upstream Envoy and the simulated provider can be compared byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

CREATED = 1_700_000_000
REPLY_TEXT = (
    "Envoy is a high-performance edge and service proxy. An external processor "
    "lets a separate gRPC service inspect and rewrite requests and responses, "
    "so the gateway can translate between LLM API formats without proxying bytes itself."
)
STREAM_CHUNKS = 20


def chat_request(model: str, *, stream: bool = False) -> dict[str, Any]:
    """A small but realistic client request (system + user turn)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in two sentences."},
            {
                "role": "user",
                "content": "What does an Envoy external processor do in an LLM gateway?",
            },
        ],
        "max_tokens": 128,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return body


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": 31,
        "completion_tokens": 38,
        "total_tokens": 69,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion_json() -> bytes:
    body = {
        "id": "chatcmpl-BENCH0000000000000000000000",
        "object": "chat.completion",
        "created": CREATED,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": REPLY_TEXT,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_bench00000",
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _pieces(text: str, n: int) -> list[str]:
    step, extra = divmod(len(text), n)
    out, start = [], 0
    for i in range(n):
        end = start + step + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return out


def chat_completion_sse(chunks: int = STREAM_CHUNKS) -> bytes:
    """`chunks` content deltas, framed as OpenAI sends them, ending with [DONE]."""

    def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            "id": "chatcmpl-BENCH0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": "gpt-4o-mini-2024-07-18",
            "service_tier": "default",
            "system_fingerprint": "fp_bench00000",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    frames = [frame({"role": "assistant", "content": "", "refusal": None})]
    frames += [frame({"content": piece}) for piece in _pieces(REPLY_TEXT, chunks)]
    frames.append(frame({}, "stop"))
    frames.append(b"data: [DONE]\n\n")
    return b"".join(frames)
