"""Anthropic Messages as a client dialect: what a client SDK sends and expects back.

Decodes requests into `extproc.ir`, encodes answers, streams and errors in the
dialect's shape. Pure and synchronous; imports only the IR, framing and this
codec's own modules.
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


def _typed(obj: dict[str, Any], key: str, where: str, kinds: tuple[type, ...], label: str) -> Any:
    """obj[key] if it has one of `kinds` (bool never counts as a number), None if absent."""
    value = obj.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        path = f"{where}.{key}" if where else key
        raise ir.invalid_request(f"{path}: expected {label}", param=path)
    return value


def _required(value: Any, key: str, where: str) -> Any:
    if value is None:
        path = f"{where}.{key}" if where else key
        raise ir.invalid_request(f"{path}: field required", param=path)
    return value


def _str(obj: dict[str, Any], key: str, where: str = "") -> str | None:
    return _typed(obj, key, where, (str,), "a string")  # type: ignore[no-any-return]


def _int(obj: dict[str, Any], key: str, where: str = "") -> int | None:
    return _typed(obj, key, where, (int,), "an integer")  # type: ignore[no-any-return]


def _float(obj: dict[str, Any], key: str, where: str = "") -> float | None:
    value = _typed(obj, key, where, (int, float), "a number")
    return None if value is None else float(value)


def _dict(obj: dict[str, Any], key: str, where: str = "") -> dict[str, Any] | None:
    return _typed(obj, key, where, (dict,), "an object")  # type: ignore[no-any-return]


def _list(obj: dict[str, Any], key: str, where: str = "") -> list[Any] | None:
    return _typed(obj, key, where, (list,), "an array")  # type: ignore[no-any-return]


def _load_request(body: bytes) -> dict[str, Any]:
    try:
        obj = _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ir.invalid_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ir.invalid_request("request body must be a JSON object")
    return obj


def decode_request(
    body: bytes, *, path_model: str | None = None, path_stream: bool = False
) -> ir.ChatRequest:
    """Anthropic request body -> IR. The model and stream flag live in the body."""
    obj = _load_request(body)
    max_tokens = _required(_int(obj, "max_tokens"), "max_tokens", "")
    if max_tokens < 1:
        raise ir.invalid_request("max_tokens: must be at least 1", param="max_tokens")
    choice, parallel = _decode_tool_choice(_dict(obj, "tool_choice"))
    stream = bool(_typed(obj, "stream", "", (bool,), "a boolean"))
    return ir.ChatRequest(
        model=_required(_str(obj, "model"), "model", ""),
        messages=_decode_messages(_required(_list(obj, "messages"), "messages", "")),
        system=_decode_system(obj.get("system")),
        tools=[
            _decode_tool(tool, f"tools[{i}]") for i, tool in enumerate(_list(obj, "tools") or [])
        ],
        tool_choice=choice,
        parallel_tool_calls=parallel,
        response_format=_decode_output_format(obj),
        temperature=_float(obj, "temperature"),
        top_p=_float(obj, "top_p"),
        top_k=_int(obj, "top_k"),
        max_tokens=max_tokens,
        stop=_decode_stop(obj),
        stream=stream,
        stream_include_usage=stream,  # Anthropic streams always carry usage
        user=_str(_dict(obj, "metadata") or {}, "user_id", "metadata"),
    )


def _decode_stop(obj: dict[str, Any]) -> list[str]:
    stop = _list(obj, "stop_sequences") or []
    if not all(isinstance(s, str) for s in stop):
        raise ir.invalid_request("stop_sequences: expected an array of strings")
    return stop


def _decode_system(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ir.invalid_request("system: expected a string or an array of text blocks")
    texts = []
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise ir.invalid_request(f"system[{i}]: only text blocks are allowed")
        texts.append(_required(_str(block, "text", f"system[{i}]"), "text", f"system[{i}]"))
    return "\n".join(texts)


def _content_blocks(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise ir.invalid_request(f"{where}.content: expected a string or an array of blocks")
    for j, block in enumerate(value):
        if not isinstance(block, dict):
            raise ir.invalid_request(f"{where}.content[{j}]: expected an object")
    return value


def _decode_messages(raw: list[Any]) -> list[ir.Message]:
    messages: list[ir.Message] = []
    tool_names: dict[str, str] = {}  # tool_use id -> name, to name the tool results
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise ir.invalid_request(f"{where}: expected an object")
        blocks = _content_blocks(_required(item.get("content"), "content", where), where)
        role = item.get("role")
        if role == "assistant":
            messages.append(_decode_assistant(blocks, where, tool_names))
        elif role == "user":
            messages.extend(_decode_user_turn(blocks, where, tool_names))
        else:
            raise ir.invalid_request(f"{where}.role: expected 'user' or 'assistant'")
    return messages


def _decode_assistant(
    blocks: list[dict[str, Any]], where: str, tool_names: dict[str, str]
) -> ir.Message:
    parts: list[ir.Part] = []
    calls: list[ir.ToolCall] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "tool_use":
            call = _decode_tool_use(block, f"{where}.content[{j}]")
            tool_names[call.id] = call.name
            calls.append(call)
        elif kind not in ("thinking", "redacted_thinking"):  # the IR carries no reasoning
            parts.append(_decode_part(block, f"{where}.content[{j}]"))
    return ir.Message(role="assistant", content=parts, tool_calls=calls)


def _decode_user_turn(
    blocks: list[dict[str, Any]], where: str, tool_names: dict[str, str]
) -> list[ir.Message]:
    """One user turn -> IR messages: each tool_result its own "tool" message, in order."""
    messages: list[ir.Message] = []
    pending: list[ir.Part] = []
    for j, block in enumerate(blocks):
        if block.get("type") != "tool_result":
            pending.append(_decode_part(block, f"{where}.content[{j}]"))
            continue
        if pending:
            messages.append(ir.Message(role="user", content=pending))
            pending = []
        messages.append(_decode_tool_result(block, f"{where}.content[{j}]", tool_names))
    if pending or not messages:
        messages.append(ir.Message(role="user", content=pending))
    return messages


def _decode_tool_use(block: dict[str, Any], where: str) -> ir.ToolCall:
    arguments = _dict(block, "input", where)
    return ir.ToolCall(
        id=_required(_str(block, "id", where), "id", where),
        name=_required(_str(block, "name", where), "name", where),
        arguments=_encode_json(arguments if arguments is not None else {}).decode(),
    )


def _decode_tool_result(
    block: dict[str, Any], where: str, tool_names: dict[str, str]
) -> ir.Message:
    call_id = _required(_str(block, "tool_use_id", where), "tool_use_id", where)
    content = block.get("content")
    parts = [] if content is None else _content_blocks(content, where)
    return ir.Message(
        role="tool",
        content=[_decode_part(p, f"{where}.content[{k}]") for k, p in enumerate(parts)],
        tool_call_id=call_id,
        name=tool_names.get(call_id),
    )


def _decode_part(block: dict[str, Any], where: str) -> ir.Part:
    kind = block.get("type")
    if kind == "text":
        return ir.TextPart(text=_required(_str(block, "text", where), "text", where))
    if kind == "image":
        source = _required(_dict(block, "source", where), "source", where)
        at = f"{where}.source"
        if source.get("type") == "base64":
            return ir.ImagePart(
                data=_required(_str(source, "data", at), "data", at),
                media_type=_required(_str(source, "media_type", at), "media_type", at),
            )
        if source.get("type") == "url":
            return ir.ImagePart(url=_required(_str(source, "url", at), "url", at))
    return ir.UnknownPart(source_format=SOURCE_FORMAT, raw=block)


def _decode_tool(tool: Any, where: str) -> ir.Tool:
    if not isinstance(tool, dict):
        raise ir.invalid_request(f"{where}: expected an object")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise ir.invalid_request(f"{where}: server tool type {kind!r} is not supported")
    return ir.Tool(
        name=_required(_str(tool, "name", where), "name", where),
        description=_str(tool, "description", where),
        parameters=_required(_dict(tool, "input_schema", where), "input_schema", where),
    )


def _decode_tool_choice(value: dict[str, Any] | None) -> tuple[ir.ToolChoice | None, bool | None]:
    if value is None:
        return None, None
    kind = value.get("type")
    mode = _TOOL_CHOICE_IN.get(kind) if isinstance(kind, str) else None
    if mode is None:
        raise ir.invalid_request("tool_choice.type: expected auto, any, tool or none")
    name = _str(value, "name", "tool_choice")
    if mode == "tool" and not name:
        raise ir.invalid_request("tool_choice.name: required with type 'tool'")
    disable = _typed(value, "disable_parallel_tool_use", "tool_choice", (bool,), "a boolean")
    return ir.ToolChoice(mode=mode, name=name), (False if disable else None)  # type: ignore[arg-type]


def _decode_output_format(obj: dict[str, Any]) -> ir.ResponseFormat | None:
    config = _dict(obj, "output_config") or {}
    fmt = _dict(config, "format", "output_config") or _dict(obj, "output_format")
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema":
        raise ir.invalid_request("output_config.format.type: expected 'json_schema'")
    schema = _required(
        _dict(fmt, "schema", "output_config.format"), "schema", "output_config.format"
    )
    return ir.ResponseFormat(type="json_schema", schema=schema)


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
        "input_tokens": max(usage.input_tokens - usage.cached_tokens, 0),
        "cache_creation_input_tokens": 0,  # folded into input_tokens by the IR
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


def _sse(name: str, payload: dict[str, Any]) -> bytes:
    # The SDK drops events without an `event:` line, and `type` repeats the name.
    return sse_event(_encode_json({"type": name, **payload}), name)


def _error_event(error_type: str, message: str) -> bytes:
    return _sse("error", {"error": {"type": error_type, "message": message}})
