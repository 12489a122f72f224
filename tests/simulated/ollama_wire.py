"""Ollama REST API on the wire (github.com/ollama/ollama docs/api.md):
/api/chat (NDJSON stream unless `"stream": false`), /api/embed, /api/tags.

Streamed lines carry `done: false`; the last line has `done: true`, `done_reason`
and the counters (prompt_eval_count, eval_count, durations in ns). Tool calls
come whole in one line, with `arguments` as an object. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

from typing import Any

from tests.simulated.framing import NDJSON, Call, Rendered, json_reply, ndjson_line
from tests.simulated.replies import (
    Prompt,
    Reply,
    ToolSpec,
    as_reported,
    count_words,
    embedding_vector,
    plan_reply,
)
from tests.simulated.scenario import Usage

CREATED_AT = "2025-01-01T00:00:00.000000Z"
MODELS = ("llama3.2:latest", "nomic-embed-text:latest")


def error(status: int, message: str | None) -> Rendered:
    return json_reply({"error": message or f"simulated error {status}"}, status)


def decode_chat(body: dict[str, Any]) -> Prompt:
    messages = body.get("messages") or []
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    last = messages[-1] if messages else {}
    tools = tuple(
        ToolSpec(t["function"]["name"], t["function"].get("parameters") or {})
        for t in body.get("tools") or []
        if "function" in t
    )
    return Prompt(
        provider="ollama",
        model=str(body.get("model")),
        texts=tuple(texts),
        last_user_text=users[-1] if users else "",
        tools=tools,
        tool_result=last.get("content", "") if last.get("role") == "tool" else None,
        # `format` is "json" or a JSON schema object.
        json_mode=bool(body.get("format")),
        stream=body.get("stream", True) is not False,
    )


def _line(prompt: Prompt, message: dict[str, Any]) -> dict[str, Any]:
    return {"model": prompt.model, "created_at": CREATED_AT, "message": message, "done": False}


def _final(prompt: Prompt, message: dict[str, Any], usage: Usage) -> dict[str, Any]:
    return _line(prompt, message) | {
        "done_reason": "stop",
        "done": True,
        "total_duration": 5_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": usage.input_tokens,
        "prompt_eval_duration": 1_000_000,
        "eval_count": usage.output_tokens,
        "eval_duration": 3_000_000,
    }


def _tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls]


def chat(call: Call) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    if not body.get("model"):
        return error(400, "model is required")
    prompt = decode_chat(body)
    reply = plan_reply(prompt, call.scenario)
    prompt = as_reported(prompt, call.scenario)
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["tool_calls"] = _tool_calls(reply)
    if not prompt.stream:
        return json_reply(_final(prompt, message, reply.usage), usage=reply.usage)
    lines = [_line(prompt, {"role": "assistant", "content": piece}) for piece in reply.pieces]
    if reply.tool_calls:
        lines.append(
            _line(prompt, {"role": "assistant", "content": "", "tool_calls": _tool_calls(reply)})
        )
    lines.append(_final(prompt, {"role": "assistant", "content": ""}, reply.usage))
    return Rendered(200, [ndjson_line(x) for x in lines], NDJSON, "ndjson", usage=reply.usage)


def embed(call: Call) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    raw = body.get("input")
    if not body.get("model") or raw is None:
        return error(400, "model and input are required")
    inputs = [raw] if isinstance(raw, str) else [str(x) for x in raw]
    dim = int(body.get("dimensions") or call.scenario.embedding_dim)
    tokens = max(1, count_words(inputs))
    out = {
        "model": body["model"],
        "embeddings": [embedding_vector(text, dim) for text in inputs],
        "total_duration": 2_000_000,
        "load_duration": 500_000,
        "prompt_eval_count": tokens,
    }
    return json_reply(out, usage=Usage(tokens, 0))


def tags(call: Call) -> Rendered:
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    }
    models = [
        {
            "name": m,
            "model": m,
            "modified_at": "2025-01-01T00:00:00Z",
            "size": 2_019_393_189,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": details,
        }
        for m in MODELS
    ]
    return json_reply({"models": models})
