"""Anthropic Messages as a client dialect: the answers a client SDK expects back.

Encodes IR responses, streams (named SSE events) and errors in Anthropic's shape;
the request side is request.py. Pure and synchronous; imports only the IR,
framing and this codec's own modules.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir
from extproc.formats.anthropic_messages.wire import (
    SOURCE_FORMAT,
    _decode_json,
    _encode_json,
    _tool_use_block,
)
from extproc.formats.framing import sse_event

_STOP_REASON: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}
_ERROR_TYPE_BY_KIND: dict[str, str] = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "server_error": "api_error",
    "bad_gateway": "api_error",
    "overloaded": "overloaded_error",
    "timeout": "timeout_error",
}


def encode_response(resp: ir.ChatResponse) -> bytes:
    """IR response -> Anthropic `message` object."""
    content = [block for block in map(_encode_response_part, resp.content) if block]
    for call in resp.tool_calls:
        content.append(_tool_use_block(call, _arguments_object(call.arguments)))
    return _encode_json(
        {
            "id": resp.id,
            "type": "message",
            "role": "assistant",
            "model": resp.model,
            "content": content,
            "stop_reason": _STOP_REASON[resp.finish_reason],
            "stop_sequence": None,  # the IR does not say which stop sequence matched
            "usage": _encode_usage(resp.usage or ir.Usage()),
        }
    )


def _encode_response_part(part: ir.Part) -> dict[str, Any] | None:
    if isinstance(part, ir.TextPart):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, ir.UnknownPart) and part.source_format == SOURCE_FORMAT:
        return part.raw
    return None  # Anthropic responses carry no images; foreign unknown parts have no form here


def _arguments_object(text: str) -> dict[str, Any]:
    """Tool arguments as Anthropic's `input` object; {} when the model produced no object."""
    try:
        value = _decode_json(text) if text.strip() else {}
    except (msgspec.DecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _encode_usage(usage: ir.Usage) -> dict[str, int]:
    return {
        "input_tokens": max(usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens, 0),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    }


def encode_error(err: ir.ErrorInfo) -> bytes:
    error_type = _ERROR_TYPE_BY_KIND.get(err.kind, "api_error")
    return _encode_json({"type": "error", "error": {"type": error_type, "message": err.message}})


class StreamEncoder:
    """IR stream events -> Anthropic named SSE events, message_start ... message_stop.

    message_delta needs both the stop reason and the final usage, which other dialects
    deliver in either order, so it is sent by finish(). Deltas for a tool call whose
    block is no longer open (interleaved parallel calls) keep their own block index.
    """

    __slots__ = ("_done", "_finish", "_next_block", "_open", "_started", "_tools", "_usage")

    def __init__(self, *, include_usage: bool = True) -> None:
        # Anthropic streams always carry usage, so include_usage changes nothing.
        self._started = False
        self._done = False
        self._next_block = 0
        self._open: tuple[int, str] | None = None  # (block index, "text" | "tool_use")
        self._tools: dict[int, int] = {}  # IR tool-call index -> block index
        self._finish: ir.FinishReason | None = None
        self._usage: ir.Usage | None = None

    def feed(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._usage = _opening_usage(events) or self._usage
        for event in events:
            if self._done:
                break
            self._event(event, out)
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        if self._finish is None:
            return _error_event("api_error", "upstream stream ended before completion")
        out: list[bytes] = []
        self._start(ir.StreamStart(id="msg_unknown", model=""), out)
        self._close(out)
        delta = {"stop_reason": _STOP_REASON[self._finish], "stop_sequence": None}
        usage = _encode_usage(self._usage) if self._usage else {"output_tokens": 0}
        out.append(_sse("message_delta", {"delta": delta, "usage": usage}))
        out.append(_sse("message_stop", {}))
        return b"".join(out)

    def _event(self, event: ir.StreamEvent, out: list[bytes]) -> None:
        if isinstance(event, ir.StreamStart):
            self._start(event, out)
        elif isinstance(event, ir.TextDelta):
            self._text(event.text, out)
        elif isinstance(event, ir.ToolCallStart):
            self._tool_start(event, out)
        elif isinstance(event, ir.ToolCallDelta):
            block = self._tools.get(event.index)
            if block is not None and event.arguments:
                delta = {"type": "input_json_delta", "partial_json": event.arguments}
                out.append(_sse("content_block_delta", {"index": block, "delta": delta}))
        elif isinstance(event, ir.StreamUsage):
            self._usage = event.usage
        elif isinstance(event, ir.StreamFinish):
            self._close(out)
            self._finish = event.finish_reason
        elif isinstance(event, ir.StreamError):
            self._done = True
            error_type = _ERROR_TYPE_BY_KIND.get(event.error.kind, "api_error")
            out.append(_error_event(error_type, event.error.message))

    def _start(self, start: ir.StreamStart, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        message: dict[str, Any] = {
            "id": start.id,
            "type": "message",
            "role": "assistant",
            "model": start.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _encode_usage(self._usage or ir.Usage()),
        }
        out.append(_sse("message_start", {"message": message}))

    def _text(self, text: str, out: list[bytes]) -> None:
        if not text:
            return
        if self._open is None or self._open[1] != "text":
            self._open_block({"type": "text", "text": ""}, "text", out)
        delta = {"type": "text_delta", "text": text}
        out.append(_sse("content_block_delta", {"index": self._next_block - 1, "delta": delta}))

    def _tool_start(self, event: ir.ToolCallStart, out: list[bytes]) -> None:
        self._tools[event.index] = self._next_block
        block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
        self._open_block(block, "tool_use", out)

    def _open_block(self, block: dict[str, Any], kind: str, out: list[bytes]) -> None:
        self._start(ir.StreamStart(id="msg_unknown", model=""), out)
        self._close(out)
        index = self._next_block
        self._next_block += 1
        self._open = (index, kind)
        out.append(_sse("content_block_start", {"index": index, "content_block": block}))

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(_sse("content_block_stop", {"index": self._open[0]}))
            self._open = None


def _opening_usage(events: list[ir.StreamEvent]) -> ir.Usage | None:
    """Usage that comes before any content (an Anthropic upstream's message_start): the
    client's message_start then carries the input and its prompt-cache reads and writes."""
    for event in events:
        if isinstance(event, ir.StreamUsage):
            return event.usage
        if not isinstance(event, ir.StreamStart):
            return None
    return None


def _sse(name: str, payload: dict[str, Any]) -> bytes:
    # The SDK drops events without an `event:` line, and `type` repeats the name.
    return sse_event(_encode_json({"type": name, **payload}), name)


def _error_event(error_type: str, message: str) -> bytes:
    return _sse("error", {"error": {"type": error_type, "message": message}})
