"""Anthropic Messages as a provider: what the gateway sends upstream and reads back.

Encodes IR requests, decodes answers, streams and errors. Pure and synchronous;
imports only the IR, framing and this codec's own modules.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir
from extproc.formats.anthropic_messages.wire import (
    _TOOL_CHOICE_IN,
    SOURCE_FORMAT,
    _decode_json,
    _encode_json,
    _tool_use_block,
)
from extproc.formats.framing import SSEEvent, SSEParser

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; other dialects make it optional
_MAX_ERROR_MESSAGE = 2000

_FINISH_REASON: dict[str, ir.FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICE_OUT: dict[str, str] = {v: k for k, v in _TOOL_CHOICE_IN.items()}
# https://docs.anthropic.com/en/api/errors (+ billing_error / timeout_error from the SDK types)
_KIND_BY_ERROR_TYPE: dict[str, ir.ErrorKind] = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "authentication",
    "billing_error": "permission",
    "permission_error": "permission",
    "not_found_error": "not_found",
    "request_too_large": "request_too_large",
    "rate_limit_error": "rate_limit",
    "api_error": "server_error",
    "overloaded_error": "overloaded",
    "timeout_error": "timeout",
}


def upstream_path(*, model: str, stream: bool) -> str:
    return "/v1/messages"


def encode_request(req: ir.ChatRequest, *, model: str) -> bytes:
    """IR -> Anthropic request body for `model`. The IR seed is dropped (no equivalent)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": _encode_messages(req.messages),
    }
    if req.system_parts:  # the client's blocks, for their cache breakpoints
        body["system"] = [
            _cached({"type": "text", "text": p.text}, p.cache) for p in req.system_parts
        ]
    elif req.system:
        body["system"] = req.system
    if req.cache is not None:
        body["cache_control"] = _cache_control(req.cache)
    body.update(_sampling(req))
    if req.stream:
        body["stream"] = True
    if req.tools:
        body["tools"] = [_encode_tool(tool) for tool in req.tools]
    choice = _encode_tool_choice(req)
    if choice:
        body["tool_choice"] = choice
    output = _output_config(req)
    if output:
        body["output_config"] = output
    if req.user:
        body["metadata"] = {"user_id": req.user}
    return _encode_json(body)


def _output_config(req: ir.ChatRequest) -> dict[str, Any]:
    """The answer's format and effort. Effort "none" asks for no thinking, which Claude
    does only when `thinking` is enabled (never here): nothing to send."""
    config: dict[str, Any] = {}
    if req.response_format is not None and req.response_format.type != "text":
        config["format"] = _encode_output_format(req.response_format)
    effort = req.reasoning_effort
    if effort is not msgspec.UNSET and effort != "none":
        if effort == "minimal":
            raise ir.effort_refused(effort, "anthropic")
        config["effort"] = effort
    return config


def _sampling(req: ir.ChatRequest) -> dict[str, Any]:
    if req.temperature is not None and not 0 <= req.temperature <= 1:
        # OpenAI allows up to 2; Anthropic refuses more than 1 and clamping would hide it.
        raise ir.invalid_request(
            f"temperature {req.temperature} is outside the anthropic provider's range 0..1",
            param="temperature",
        )
    out: dict[str, Any] = {
        key: value
        for key, value in (
            ("temperature", req.temperature),
            ("top_p", req.top_p),
            ("top_k", req.top_k),
        )
        if value is not None
    }
    if req.stop:
        out["stop_sequences"] = list(req.stop)
    return out


def _encode_messages(messages: list[ir.Message]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _encode_message(message, f"messages[{i}]", messages[:i])
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Anthropic requires alternating roles
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0].keys() == {"type", "text"}:
            turn["content"] = content[0]["text"]  # the plain-string form, as clients send it
    return turns


def _encode_message(
    message: ir.Message, where: str, history: list[ir.Message]
) -> list[dict[str, Any]]:
    blocks = [b for j, p in enumerate(message.content) if (b := _encode_part(p, f"{where}[{j}]"))]
    if message.role == "assistant":
        for call in message.tool_calls:
            blocks.append(_tool_use_block(call, _history_arguments(call.arguments, where)))
    elif message.role == "tool":
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": _result_id(message, history),
        }
        if len(blocks) == 1 and blocks[0].keys() == {"type", "text"}:
            result["content"] = blocks[0]["text"]
        elif blocks:
            result["content"] = blocks
        blocks = [result]
    if message.cache is not None and blocks:
        _cached(blocks[-1], message.cache)
    return blocks


def _cache_control(cache: ir.CacheBreakpoint) -> dict[str, str]:
    return {"type": "ephemeral", "ttl": cache.ttl} if cache.ttl else {"type": "ephemeral"}


def _cached(block: dict[str, Any], cache: ir.CacheBreakpoint | None) -> dict[str, Any]:
    """`block` with the breakpoint's cache_control (none: unchanged)."""
    if cache is not None:
        block["cache_control"] = _cache_control(cache)
    return block


def _result_id(message: ir.Message, history: list[ir.Message]) -> str:
    """The tool_use id a result answers; by name when the client dialect gave no id."""
    if message.tool_call_id:
        return message.tool_call_id
    for earlier in reversed(history):
        for call in earlier.tool_calls:
            if call.name == message.name:
                return call.id
    raise ir.invalid_request(f"tool result for {message.name!r} names no earlier tool call")


def _history_arguments(text: str, where: str) -> dict[str, Any]:
    try:
        value = _decode_json(text) if text.strip() else {}
    except (msgspec.DecodeError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise ir.invalid_request(f"{where}: tool call arguments must be a JSON object")
    return value


def _encode_part(part: ir.Part, where: str) -> dict[str, Any] | None:
    if isinstance(part, ir.TextPart):
        if not part.text:
            return None  # Anthropic refuses empty text blocks
        return _cached({"type": "text", "text": part.text}, part.cache)
    if isinstance(part, ir.ImagePart):
        return _cached({"type": "image", "source": _image_source(part, where)}, part.cache)
    if part.source_format == SOURCE_FORMAT:
        return part.raw
    kind = part.raw.get("type")
    raise ir.invalid_request(
        f"{where}: content of type {kind!r} from {part.source_format} "
        "is not supported by the anthropic provider"
    )


def _image_source(part: ir.ImagePart, where: str) -> dict[str, str]:
    if part.data is not None:
        if not part.media_type:
            raise ir.invalid_request(f"{where}: inline image without a media type")
        return {"type": "base64", "media_type": part.media_type, "data": part.data}
    url = part.url or ""
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if encoding != "base64" or not media_type or not data:
            raise ir.invalid_request(f"{where}: only base64 data URLs are supported")
        return {"type": "base64", "media_type": media_type, "data": data}
    if not url:
        raise ir.invalid_request(f"{where}: image without url or data")
    return {"type": "url", "url": url}


def _encode_tool(tool: ir.Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    out["input_schema"] = _normalise_schema(tool.parameters or {"type": "object", "properties": {}})
    return _cached(out, tool.cache)


def _normalise_schema(node: Any) -> Any:
    """Lower-case JSON-schema type names: Gemini clients send "OBJECT", Anthropic refuses it."""
    if isinstance(node, dict):
        return {k: _lower_type(v) if k == "type" else _normalise_schema(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_normalise_schema(v) for v in node]
    return node


def _lower_type(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.lower() for v in value]
    return _normalise_schema(value)  # a property that happens to be named "type"


def _encode_tool_choice(req: ir.ChatRequest) -> dict[str, Any] | None:
    choice = req.tool_choice or ir.ToolChoice()
    if not req.tools:
        if choice.mode in ("required", "tool"):
            raise ir.invalid_request(f"tool_choice {choice.mode!r} given without tools")
        return None  # Anthropic refuses tool_choice without tools
    if req.tool_choice is None and req.parallel_tool_calls is not False:
        return None
    out: dict[str, Any] = {"type": _TOOL_CHOICE_OUT[choice.mode]}
    if choice.mode == "tool":
        if not choice.name:
            raise ir.invalid_request("tool_choice 'tool' needs a tool name")
        out["name"] = choice.name
    if req.parallel_tool_calls is False and choice.mode != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _encode_output_format(fmt: ir.ResponseFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        raise ir.invalid_request(
            "response_format json_object is not supported by the anthropic provider "
            "(it has no schema-less JSON mode); use json_schema",
            param="response_format",
        )
    if not fmt.schema:
        raise ir.invalid_request("response_format json_schema needs a schema")
    return {"type": "json_schema", "schema": fmt.schema}


def decode_response(body: bytes) -> ir.ChatResponse:
    """Anthropic `message` object -> IR response."""
    try:
        obj = _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ir.bad_gateway("anthropic returned a response that is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("content"), list):
        raise ir.bad_gateway("anthropic returned a response that is not a message")
    parts: list[ir.Part] = []
    calls: list[ir.ToolCall] = []
    for block in obj["content"]:
        if not isinstance(block, dict):
            raise ir.bad_gateway("anthropic returned a malformed content block")
        kind = block.get("type")
        if kind == "text":
            parts.append(ir.TextPart(text=str(block.get("text") or "")))
        elif kind == "tool_use":
            calls.append(_response_tool_call(block))
        elif kind not in ("thinking", "redacted_thinking"):
            parts.append(ir.UnknownPart(source_format=SOURCE_FORMAT, raw=block))
    return ir.ChatResponse(
        id=str(obj.get("id") or ""),
        model=str(obj.get("model") or ""),
        content=parts,
        tool_calls=calls,
        finish_reason=_finish_reason(obj.get("stop_reason")),
        usage=_ir_usage(_usage_counts(obj.get("usage"), {})) if "usage" in obj else None,
    )


def _finish_reason(stop_reason: Any) -> ir.FinishReason:
    return _FINISH_REASON.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _response_tool_call(block: dict[str, Any]) -> ir.ToolCall:
    arguments = block.get("input")
    return ir.ToolCall(
        id=str(block.get("id") or ""),
        name=str(block.get("name") or ""),
        arguments=_encode_json(arguments if isinstance(arguments, dict) else {}).decode(),
    )


_USAGE_KEYS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


def _usage_counts(raw: Any, counts: dict[str, int]) -> dict[str, int]:
    """Merge Anthropic usage counts into `counts` (later counts are cumulative totals)."""
    if isinstance(raw, dict):
        for key in _USAGE_KEYS:
            value = raw.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                counts[key] = value
    return counts


def _ir_usage(counts: dict[str, int]) -> ir.Usage:
    # Anthropic input_tokens excludes cache reads and writes; the IR's includes both.
    cached = counts.get("cache_read_input_tokens", 0)
    created = counts.get("cache_creation_input_tokens", 0)
    return ir.Usage(
        input_tokens=counts.get("input_tokens", 0) + created + cached,
        output_tokens=counts.get("output_tokens", 0),
        cached_tokens=cached,
        cache_write_tokens=created,
    )


def decode_error(status: int, body: bytes) -> ir.ErrorInfo:
    """Anthropic error JSON -> ErrorInfo; non-JSON bodies (HTML from a proxy) stay unquoted."""
    try:
        obj = _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        obj = None
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _error_info(error.get("type"), error["message"], status)
    return ir.ErrorInfo(
        kind=ir.error_kind_for_status(status),
        message=f"anthropic returned HTTP {status} without an error message",
    )


def _error_info(error_type: Any, message: str, status: int) -> ir.ErrorInfo:
    kind = _KIND_BY_ERROR_TYPE.get(error_type) if isinstance(error_type, str) else None
    return ir.ErrorInfo(
        kind=kind or ir.error_kind_for_status(status),
        message=message[:_MAX_ERROR_MESSAGE],
    )


class StreamDecoder:
    """Anthropic SSE stream -> IR events. State: tool-call index per content block."""

    __slots__ = ("_counts", "_done", "_parser", "_tools")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._tools: dict[int, int] = {}  # content block index -> IR tool-call index
        self._counts: dict[str, int] = {}  # latest Anthropic usage counts
        self._done = False

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        return self._handle(self._parser.feed(chunk)) if not self._done else []

    def finish(self) -> list[ir.StreamEvent]:
        if self._done:
            return []
        events = self._handle(self._parser.finish())
        if not self._done:
            self._done = True
            message = "anthropic stream ended before message_stop"
            events.append(ir.StreamError(error=ir.ErrorInfo(kind="bad_gateway", message=message)))
        return events

    def _handle(self, sse_events: list[SSEEvent]) -> list[ir.StreamEvent]:
        out: list[ir.StreamEvent] = []
        for sse in sse_events:
            if self._done:
                break
            if sse.event == "ping":
                continue
            try:
                data = _decode_json(sse.data)
            except (msgspec.DecodeError, UnicodeDecodeError):
                data = None
            if not isinstance(data, dict):
                self._fail("anthropic sent a stream event that is not a JSON object", out)
            else:
                self._event(str(data.get("type") or sse.event), data, out)
        return out

    def _fail(self, message: str, out: list[ir.StreamEvent]) -> None:
        self._done = True
        out.append(ir.StreamError(error=ir.ErrorInfo(kind="bad_gateway", message=message)))

    def _event(self, kind: str, data: dict[str, Any], out: list[ir.StreamEvent]) -> None:
        if kind == "message_start":
            message = data.get("message")
            message = message if isinstance(message, dict) else {}
            _usage_counts(message.get("usage"), self._counts)
            out.append(
                ir.StreamStart(
                    id=str(message.get("id") or ""), model=str(message.get("model") or "")
                )
            )
            # The input (cache reads and writes included) is known from here on: a stream
            # cut before message_delta is still charged its real input.
            out.append(ir.StreamUsage(usage=_ir_usage(self._counts)))
        elif kind == "content_block_start":
            self._block_start(data, out)
        elif kind == "content_block_delta":
            self._block_delta(data, out)
        elif kind == "message_delta":
            delta = data.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            # The final usage before the finish: encoders that answer at the finish
            # (Gemini's last chunk, Ollama's done line) must not use message_start's.
            _usage_counts(data.get("usage"), self._counts)
            out.append(ir.StreamUsage(usage=_ir_usage(self._counts)))
            if reason is not None:
                out.append(ir.StreamFinish(finish_reason=_finish_reason(reason)))
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            error = data.get("error")
            error = error if isinstance(error, dict) else {}
            message = str(error.get("message") or "anthropic stream error")
            self._done = True
            out.append(ir.StreamError(error=_error_info(error.get("type"), message, 500)))
        # content_block_stop and event types added later carry nothing for the IR

    def _block_start(self, data: dict[str, Any], out: list[ir.StreamEvent]) -> None:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return
        if block.get("type") == "text" and block.get("text"):
            out.append(ir.TextDelta(text=str(block["text"])))
        elif block.get("type") == "tool_use" and isinstance(data.get("index"), int):
            index = len(self._tools)
            self._tools[data["index"]] = index
            call_id, name = str(block.get("id") or ""), str(block.get("name") or "")
            out.append(ir.ToolCallStart(index=index, id=call_id, name=name))
            if isinstance(block.get("input"), dict) and block["input"]:
                arguments = _encode_json(block["input"]).decode()
                out.append(ir.ToolCallDelta(index=index, arguments=arguments))

    def _block_delta(self, data: dict[str, Any], out: list[ir.StreamEvent]) -> None:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            out.append(ir.TextDelta(text=str(delta["text"])))
        elif kind == "input_json_delta" and delta.get("partial_json"):
            block_index = data.get("index")
            index = self._tools.get(block_index) if isinstance(block_index, int) else None
            if index is not None:
                out.append(ir.ToolCallDelta(index=index, arguments=str(delta["partial_json"])))
