"""A config, a process context and the provider answers the phase tests drive the phases with.

No Envoy and no provider: the tests call the phase handlers with the header
dicts and bodies Envoy would send, and read the neutral actions they answer.
The store, when a test needs one, comes from conftest.py's `new_store`.
"""

from __future__ import annotations

import json
import random
from typing import Any

from extproc.config import settings
from extproc.phases.actions import Action, Continue, Respond
from extproc.phases.context import Context
from extproc.store import Store

NOW = 1_800_000_000.0  # the fixed clock: a Friday in 2027, mid-minute
SEED = 17

CONFIG: dict[str, Any] = {
    "providers": [
        {
            "name": "oa",
            "type": "openai",
            "base_url": "http://127.0.0.1:9",
            "credentials": [{"name": "main", "api_key": "sk-oa", "rpm": 100, "tpm": 100000}],
        },
        {
            "name": "an",
            "type": "anthropic",
            "base_url": "http://127.0.0.1:9",
            "api_key": "sk-an",
        },
    ],
    "models": [
        {"name": "solo", "targets": [{"provider": "oa", "model": "gpt-x"}]},
        {
            "name": "pair",
            "targets": [
                {"provider": "oa", "model": "gpt-x"},
                {"provider": "an", "model": "claude-x"},
            ],
        },
        {"name": "embed", "targets": [{"provider": "oa", "model": "embed-x"}]},
        {
            "name": "embed-pair",
            "targets": [
                {"provider": "oa", "model": "embed-x"},
                {"provider": "oa", "model": "embed-y"},
            ],
        },
    ],
    "routing": {"breaker": {"failures": 1, "window_s": 30, "open_s": 30}},
}


def context(store: Store | None = None, config: dict[str, Any] | None = None) -> Context:
    parsed = settings.parse(json.dumps(config or CONFIG), env={})
    return Context(parsed, store, rng=random.Random(SEED), clock=lambda: NOW)


def chat_body(model: str, *, stream: bool = False, text: str = "hi") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    return json.dumps(body).encode()


def continued(action: Action) -> Continue:
    assert isinstance(action, Continue), action
    return action


def responded(action: Action) -> Respond:
    assert isinstance(action, Respond), action
    return action


def headers_of(action: Continue) -> dict[str, str]:
    return dict(action.set_headers)


def openai_completion(text: str, *, model: str = "gpt-x-2026", prompt: int = 5) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2},
        }
    ).encode()


def anthropic_message(text: str) -> bytes:
    return json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x-2026",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 7, "output_tokens": 3},
        }
    ).encode()


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def anthropic_stream(pieces: list[str]) -> list[bytes]:
    """An Anthropic Messages stream, one SSE event per chunk."""
    start = {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-2026",
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 7, "output_tokens": 1},
    }
    block = {"type": "text", "text": ""}
    return [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        *(
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": p},
                },
            )
            for p in pieces
        ),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": len(pieces)},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]


def sample(ctx: Context, name: str, labels: dict[str, str]) -> float:
    """A metric's value in the context's registry (0 when never counted)."""
    value = ctx.telemetry.metrics.registry.get_sample_value(name, labels)
    return value or 0.0
