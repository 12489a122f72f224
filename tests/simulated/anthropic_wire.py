"""Anthropic Messages API on the wire (docs.anthropic.com/en/api/messages,
/en/docs/build-with-claude/streaming, /en/api/errors).

Streams carry `event:` lines; order: message_start, content_block_start, ping,
content_block_delta..., content_block_stop, message_delta (stop_reason and the
cumulative output_tokens), message_stop.
"""

from __future__ import annotations

from typing import Any

from tests.simulated.framing import SSE, Call, Rendered, json_reply, sse_frame
from tests.simulated.replies import (
    Prompt,
    Reply,
    ToolSpec,
    as_reported,
    content_texts,
    plan_reply,
    split_even,
)
from tests.simulated.scenario import Usage

MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5")
_ERRORS = {
    400: ("invalid_request_error", "Invalid request (simulated)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Permission denied (simulated)."),
    404: ("not_found_error", "Not found (simulated)."),
    413: ("request_too_large", "Request exceeds the maximum allowed size."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit (simulated)."),
    500: ("api_error", "Internal server error (simulated)."),
    503: ("api_error", "Service unavailable (simulated)."),
    529: ("overloaded_error", "Overloaded"),
}


def has_credentials(headers: dict[str, str]) -> bool:
    # anthropic 2.x may send `Authorization: Bearer`; the API key header is x-api-key.
    return bool(headers.get("x-api-key")) or headers.get("authorization", "").startswith("Bearer ")


def error(status: int, message: str | None) -> Rendered:
    kind, default = _ERRORS.get(status, ("api_error", f"HTTP {status} (simulated)."))
    body = {
        "type": "error",
        "error": {"type": kind, "message": message or default},
        "request_id": "req_simulated",
    }
    return json_reply(body, status)


def _tool_result_text(block: dict[str, Any]) -> str:
    return " ".join(content_texts(block.get("content")))


def decode_messages(body: dict[str, Any]) -> Prompt:
    texts = content_texts(body.get("system"))
    last_user = ""
    tool_result = None
    for message in body.get("messages") or []:
        content = message.get("content")
        parts = content_texts(content)
        texts.extend(parts)
        results = (
            [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
            if isinstance(content, list)
            else []
        )
        texts.extend(_tool_result_text(b) for b in results)
        if message.get("role") == "user":
            last_user = " ".join(parts) or last_user
            tool_result = " ".join(_tool_result_text(b) for b in results) if results else None
        else:
            tool_result = None
    tools = tuple(
        ToolSpec(t["name"], t.get("input_schema") or {})
        for t in body.get("tools") or []
        if "name" in t and t.get("type") in (None, "custom")
    )
    # Structured outputs: `output_config.format` (GA) or the beta `output_format`.
    json_format = (body.get("output_config") or {}).get("format") or body.get("output_format")
    return Prompt(
        provider="anthropic",
        model=str(body.get("model")),
        texts=tuple(texts),
        last_user_text=last_user,
        tools=tools,
        tool_result=tool_result,
        json_mode=bool(json_format),
        stream=body.get("stream") is True,
    )


def messages(call: Call) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    if not call.headers.get("anthropic-version"):
        return error(400, "anthropic-version: header is required")
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            return error(400, f"{name}: Field required")
    prompt = decode_messages(body)
    reply = plan_reply(prompt, call.scenario)
    prompt = as_reported(prompt, call.scenario)
    message_id = f"msg_sim{call.seq:020d}"
    if prompt.stream:
        return Rendered(
            200, _stream_frames(prompt, reply, message_id), SSE, "sse_events", usage=reply.usage
        )
    return json_reply(_message(prompt, reply, message_id), usage=reply.usage)


# The body fields POST /v1/messages/count_tokens takes (docs: Count Message tokens); the
# API refuses others ("max_tokens: Extra inputs are not permitted").
_COUNT_FIELDS = frozenset(
    (
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "output_format",
        "cache_control",
        "context_management",
        "mcp_servers",
        "speed",
    )
)


def count_tokens(call: Call) -> Rendered:
    """`{"input_tokens": N}`: the input a messages request with this body would report."""
    body = call.body if isinstance(call.body, dict) else {}
    if not call.headers.get("anthropic-version"):
        return error(400, "anthropic-version: header is required")
    for name in ("model", "messages"):
        if name not in body:
            return error(400, f"{name}: Field required")
    extra = sorted(set(body) - _COUNT_FIELDS)
    if extra:
        return error(400, f"{extra[0]}: Extra inputs are not permitted")
    usage = plan_reply(decode_messages(body), call.scenario).usage
    return json_reply({"input_tokens": usage.input_tokens})


def _usage(usage: Usage, output_tokens: int) -> dict[str, Any]:
    # Anthropic's input_tokens leave out the cache's reads and writes (docs: prompt caching).
    return {
        "input_tokens": usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _blocks(reply: Reply) -> list[dict[str, Any]]:
    if reply.tool_calls:
        return [
            {"type": "tool_use", "id": f"toolu_{c.id}", "name": c.name, "input": c.arguments}
            for c in reply.tool_calls
        ]
    return [{"type": "text", "text": reply.text}]


def _stop_reason(reply: Reply) -> str:
    return "tool_use" if reply.tool_calls else "end_turn"


def _message(prompt: Prompt, reply: Reply, message_id: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": _blocks(reply),
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": _usage(reply.usage, reply.usage.output_tokens),
    }


def _stream_frames(prompt: Prompt, reply: Reply, message_id: str) -> list[bytes]:
    start = _message(prompt, reply, message_id) | {
        "content": [],
        "stop_reason": None,
        "usage": _usage(reply.usage, 1),
    }
    frames = [sse_frame({"type": "message_start", "message": start}, "message_start")]
    for index, block in enumerate(_blocks(reply)):
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in reply.pieces]
        else:
            opening = block | {"input": {}}
            arguments = reply.tool_calls[index].arguments_json
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [
                {"type": "input_json_delta", "partial_json": f} for f in split_even(arguments, 3)
            ]
        frames.append(
            sse_frame(
                {"type": "content_block_start", "index": index, "content_block": opening},
                "content_block_start",
            )
        )
        if index == 0:
            frames.append(sse_frame({"type": "ping"}, "ping"))
        frames.extend(
            sse_frame(
                {"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta"
            )
            for d in deltas
        )
        frames.append(
            sse_frame({"type": "content_block_stop", "index": index}, "content_block_stop")
        )
    frames.append(
        sse_frame(
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
                "usage": {"output_tokens": reply.usage.output_tokens},
            },
            "message_delta",
        )
    )
    frames.append(sse_frame({"type": "message_stop"}, "message_stop"))
    return frames


def models(call: Call) -> Rendered:
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
        for m in MODELS
    ]
    return json_reply(
        {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
    )
