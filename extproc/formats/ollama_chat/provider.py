"""Ollama native API as a provider: what the gateway sends upstream and reads back.

Encodes IR requests, decodes answers, streams and errors. Pure and synchronous;
imports only the IR, framing and this codec's own modules.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from extproc import ir
from extproc.formats.framing import NDJSONSplitter
from extproc.formats.ollama_chat.wire import (
    _DATA_URL,
    _arguments_text,
    _encode,
    _text,
    _ToolCall,
    _wire_calls,
)


class _ReplyMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _ChatReply(msgspec.Struct):
    """One /api/chat response object: a whole answer or one NDJSON stream line."""

    model: str = ""
    created_at: str = ""
    message: _ReplyMessage | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: Any = None


class _EmbedReply(msgspec.Struct):
    embeddings: list[list[float]]
    model: str = ""
    prompt_eval_count: int = 0


class _ErrorBody(msgspec.Struct):
    error: Any = None


_chat_reply = msgspec.json.Decoder(_ChatReply)
_embed_reply = msgspec.json.Decoder(_EmbedReply)
_error_body = msgspec.json.Decoder(_ErrorBody)
_FRACTION = re.compile(r"\.\d+")


def _unix(created_at: str) -> int:
    """Unix seconds of an RFC 3339 time (Go writes up to 9 fraction digits); 0 if invalid."""
    try:
        return int(datetime.fromisoformat(_FRACTION.sub("", created_at, count=1)).timestamp())
    except ValueError:
        return 0


def _wire_image(part: ir.ImagePart) -> str:
    if part.data:
        return part.data
    match = _DATA_URL.fullmatch(part.url or "")
    if match:
        return match.group(2)
    raise ir.invalid_request("the ollama provider accepts only base64 images")


def _wire_content(msg: ir.Message) -> dict[str, Any]:
    images = []
    for part in msg.content:
        if isinstance(part, ir.ImagePart):
            images.append(_wire_image(part))
        elif isinstance(part, ir.UnknownPart):
            raise ir.invalid_request(
                f"the ollama provider cannot take content of kind {part.raw.get('type')!r} "
                f"from {part.source_format}"
            )
    wire: dict[str, Any] = {"role": msg.role, "content": _text(msg.content)}
    if images:
        wire["images"] = images
    return wire


def _wire_message(msg: ir.Message, names: dict[str, str]) -> dict[str, Any]:
    wire = _wire_content(msg)
    if msg.tool_calls:
        try:
            wire["tool_calls"] = _wire_calls(msg.tool_calls)
        except ValueError as exc:
            raise ir.invalid_request(str(exc), param="messages") from None
    if msg.role == "tool":
        name = msg.name or names.get(msg.tool_call_id or "")
        if name:
            wire["tool_name"] = name
        if msg.tool_call_id:
            wire["tool_call_id"] = msg.tool_call_id
    return wire


def _wire_options(req: ir.ChatRequest) -> dict[str, Any]:
    options = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "num_predict": req.max_tokens,
        "seed": req.seed,
        "stop": req.stop or None,
    }
    return {key: value for key, value in options.items() if value is not None}


def _wire_tools(req: ir.ChatRequest) -> list[dict[str, Any]]:
    """Ollama has no tool_choice: "none" drops the tools, forcing a call is refused."""
    choice = req.tool_choice
    if choice is not None and choice.mode in ("required", "tool"):
        raise ir.invalid_request(
            "the ollama provider cannot force a tool call (tool_choice)", param="tool_choice"
        )
    if choice is not None and choice.mode == "none":
        return []
    tools = []
    for tool in req.tools:
        fn: dict[str, Any] = {"name": tool.name}
        if tool.description:
            fn["description"] = tool.description
        fn["parameters"] = tool.parameters or {"type": "object", "properties": {}}
        tools.append({"type": "function", "function": fn})
    return tools


def _wire_format(fmt: ir.ResponseFormat | None) -> str | dict[str, object] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.schema is not None:
        return fmt.schema
    return "json"


def encode_request(req: ir.ChatRequest, *, model: str) -> bytes:
    """An IR request as an Ollama /api/chat body for the upstream `model`."""
    names = {c.id: c.name for m in req.messages for c in m.tool_calls}
    messages = [{"role": "system", "content": req.system}] if req.system else []
    messages += [_wire_message(m, names) for m in req.messages]
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": req.stream}
    tools = _wire_tools(req)
    if tools:
        body["tools"] = tools
    fmt = _wire_format(req.response_format)
    if fmt is not None:
        body["format"] = fmt
    options = _wire_options(req)
    if options:
        body["options"] = options
    effort = req.reasoning_effort
    if effort is not msgspec.UNSET:
        if effort not in _THINK:
            raise ir.effort_refused(effort, "ollama")
        body["think"] = _THINK[effort]
    return _encode(body)


# Ollama's `think`: on/off, or a level for the models that take one (gpt-oss).
_THINK: dict[str, bool | str] = {"none": False, "low": "low", "medium": "medium", "high": "high"}


def upstream_path(*, model: str, stream: bool) -> str:
    return "/api/chat"


def _reply_id(reply: _ChatReply) -> str:
    """Ollama responses have no id; one is derived from the creation time."""
    digits = re.sub(r"\D", "", reply.created_at)
    return f"ollama-{digits or '0'}"


def _reply_calls(reply: _ChatReply, first: int) -> list[ir.ToolCall]:
    wire = reply.message.tool_calls if reply.message else None
    return [
        ir.ToolCall(
            c.id or ir.invented_call_id(i), c.function.name, _arguments_text(c.function.arguments)
        )
        for i, c in enumerate(wire or [], first)
    ]


def _finish_reason(reply: _ChatReply, tools: bool) -> ir.FinishReason:
    if tools:
        return "tool_calls"
    return "length" if reply.done_reason == "length" else "stop"


def _usage(reply: _ChatReply) -> ir.Usage:
    return ir.Usage(input_tokens=reply.prompt_eval_count, output_tokens=reply.eval_count)


def _upstream_error(message: Any) -> ir.ErrorInfo:
    text = message if isinstance(message, str) else "upstream reported an error"
    return ir.ErrorInfo(kind="server_error", message=text)


def decode_response(body: bytes) -> ir.ChatResponse:
    """An Ollama /api/chat (stream false) response body as an IR response."""
    try:
        reply = _chat_reply.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        raise ir.bad_gateway("invalid response from the ollama upstream") from None
    if reply.error is not None:
        raise ir.GatewayError(_upstream_error(reply.error))
    calls = _reply_calls(reply, 0)
    content = reply.message.content if reply.message else None
    return ir.ChatResponse(
        id=_reply_id(reply),
        model=reply.model,
        content=[ir.TextPart(content)] if content else [],
        tool_calls=calls,
        finish_reason=_finish_reason(reply, bool(calls)),
        usage=_usage(reply),
        created=_unix(reply.created_at),
    )


class StreamDecoder:
    """Ollama /api/chat NDJSON lines -> IR stream events."""

    def __init__(self) -> None:
        self._lines = NDJSONSplitter()
        self._started = False
        self._ended = False
        self._tool_count = 0

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        for line in self._lines.feed(chunk):
            self._line(line, events)
        return events

    def finish(self) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        for line in self._lines.finish():
            self._line(line, events)
        if not self._ended:
            self._ended = True
            message = "the ollama stream ended before its final (done) line"
            events.append(ir.StreamError(ir.ErrorInfo(kind="bad_gateway", message=message)))
        return events

    def _line(self, line: bytes, events: list[ir.StreamEvent]) -> None:
        if self._ended:
            return
        try:
            reply = _chat_reply.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            self._end(
                ir.ErrorInfo(kind="bad_gateway", message="malformed ollama stream line"), events
            )
            return
        if reply.error is not None:
            self._end(_upstream_error(reply.error), events)
            return
        if not self._started:
            self._started = True
            events.append(ir.StreamStart(_reply_id(reply), reply.model, _unix(reply.created_at)))
        self._content(reply, events)
        if reply.done:
            self._ended = True
            events.append(ir.StreamFinish(_finish_reason(reply, self._tool_count > 0)))
            events.append(ir.StreamUsage(_usage(reply)))

    def _content(self, reply: _ChatReply, events: list[ir.StreamEvent]) -> None:
        if reply.message and reply.message.content:
            events.append(ir.TextDelta(reply.message.content))
        for call in _reply_calls(reply, self._tool_count):
            events.append(ir.ToolCallStart(self._tool_count, call.id, call.name))
            events.append(ir.ToolCallDelta(self._tool_count, call.arguments))
            self._tool_count += 1

    def _end(self, error: ir.ErrorInfo, events: list[ir.StreamEvent]) -> None:
        self._ended = True
        events.append(ir.StreamError(error))


def decode_error(status: int, body: bytes) -> ir.ErrorInfo:
    """An Ollama error body ({"error": "..."}) as an IR error; non-JSON is not echoed."""
    kind = ir.error_kind_for_status(status)
    try:
        error = _error_body.decode(body).error
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str) or not error:
        error = f"the ollama upstream answered HTTP {status}"
    return ir.ErrorInfo(kind=kind, message=error, status=status)


def encode_embedding_request(req: ir.EmbeddingRequest, *, model: str) -> bytes:
    body: dict[str, Any] = {"model": model, "input": req.inputs}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    return _encode(body)


def decode_embedding_response(body: bytes) -> ir.EmbeddingResponse:
    try:
        reply = _embed_reply.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        message = "invalid embedding response from the ollama upstream"
        raise ir.bad_gateway(message) from None
    usage = ir.Usage(input_tokens=reply.prompt_eval_count)
    return ir.EmbeddingResponse(model=reply.model, vectors=reply.embeddings, usage=usage)


def embedding_path() -> str:
    return "/api/embed"
