"""OpenAI Chat Completions as a provider: what the gateway sends upstream and reads back.

Encodes IR requests, decodes answers, streams and errors. Pure and synchronous;
imports only the IR, framing and this codec's own modules.
"""

from __future__ import annotations

import array
import base64
import binascii
import re
import sys
from typing import Any

import msgspec

from extproc import ir
from extproc.formats.framing import SSEParser
from extproc.formats.openai_chat.wire import (
    _CUT_MESSAGE,
    _ENCODER,
    SOURCE,
    _decode_parts,
    _encode_tool_call,
    _Message,
)


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice] = []
    id: str = ""
    model: str = ""
    created: float = 0
    usage: _Usage | None = None


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Groq(msgspec.Struct):
    usage: _Usage | None = None


class _Chunk(msgspec.Struct):
    id: str = ""
    model: str = ""
    created: float = 0
    choices: list[_ChunkChoice] = []
    usage: _Usage | None = None
    x_groq: _Groq | None = None  # Groq reports stream usage here
    error: Any = None


class _EmbeddingItem(msgspec.Struct):
    embedding: list[float] | str
    index: int = 0


class _EmbeddingList(msgspec.Struct):
    data: list[_EmbeddingItem]
    model: str = ""
    usage: _Usage | None = None


_COMPLETION = msgspec.json.Decoder(_Completion)
_CHUNK = msgspec.json.Decoder(_Chunk)
_EMBEDDING_LIST = msgspec.json.Decoder(_EmbeddingList)
_ANY = msgspec.json.Decoder()
_FINISH: dict[str, ir.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
}
_KIND_BY_TYPE: dict[str, ir.ErrorKind] = {  # in-band errors have no status: read code, then type
    "invalid_api_key": "authentication",
    "request_too_large": "request_too_large",
    "bad_gateway": "bad_gateway",
    "timeout": "timeout",
    "server_error": "server_error",
    "invalid_request_error": "invalid_request",
    "authentication_error": "authentication",
    "permission_error": "permission",
    "not_found_error": "not_found",
    "rate_limit_error": "rate_limit",
    "rate_limit_exceeded": "rate_limit",
    "insufficient_quota": "rate_limit",
    "tokens": "rate_limit",
    "requests": "rate_limit",
    "service_unavailable_error": "overloaded",
    "server_is_overloaded": "overloaded",
    "overloaded_error": "overloaded",
    "timeout_error": "timeout",
}
_SECRET = re.compile(r"\bsk-[A-Za-z0-9_*\-]{4,}")


def upstream_path(*, model: str, stream: bool) -> str:
    return "/v1/chat/completions"


def encode_request(req: ir.ChatRequest, *, model: str) -> bytes:
    """The upstream body; streamed requests always ask for usage (the gateway charges it)."""
    body: dict[str, Any] = {"model": model, "messages": _encode_messages(req)}
    if req.tools:
        body["tools"] = [_encode_tool(t) for t in req.tools]
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.tool_choice is not None:
        _put_tool_choice(body, req.tool_choice)
    if req.response_format is not None:
        body["response_format"] = _encode_response_format(req.response_format)
    _put_sampling(body, req)
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return _ENCODER.encode(body)


def _put_sampling(body: dict[str, Any], req: ir.ChatRequest) -> None:
    # max_completion_tokens replaces the deprecated max_tokens (which o-series models reject).
    for key, value in (
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("top_k", req.top_k),  # not OpenAI's; vLLM honours it, OpenAI answers a clear 400
        ("max_completion_tokens", req.max_tokens),
        ("seed", req.seed),
        ("user", req.user),
        ("prompt_cache_key", req.prompt_cache_key),  # routes to the same cache (OpenAI docs)
    ):
        if value is not None:
            body[key] = value
    if req.stop:
        body["stop"] = req.stop
    if req.reasoning_effort is not msgspec.UNSET:
        body["reasoning_effort"] = req.reasoning_effort


def _encode_messages(req: ir.ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": req.system})
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        if m.role == "user":
            out.append({"role": "user", "content": _encode_parts(m.content, where, images=True)})
        elif m.role == "assistant":
            out.append(_encode_assistant(m, where))
        else:
            if not m.tool_call_id:
                raise ir.invalid_request(
                    "OpenAI needs a tool_call_id on every tool result", param=where
                )
            content = _encode_parts(m.content, where, images=False)
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": content})
    return out


def _encode_assistant(m: ir.Message, where: str) -> dict[str, Any]:
    content: Any = _encode_parts(m.content, where, images=False)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if m.tool_calls:
        message["tool_calls"] = [_encode_tool_call(c) for c in m.tool_calls]
        if content == "":
            message["content"] = None
    return message


def _encode_parts(parts: list[ir.Part], where: str, *, images: bool) -> str | list[Any]:
    """A plain string for zero or one text part (the common case), else content parts."""
    if not parts:
        return ""
    if len(parts) == 1 and isinstance(parts[0], ir.TextPart):
        return parts[0].text
    return [_encode_part(p, where, images=images) for p in parts]


def _encode_part(part: ir.Part, where: str, *, images: bool) -> dict[str, Any]:
    if isinstance(part, ir.TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ir.ImagePart):
        if not images:
            raise ir.invalid_request("OpenAI accepts images in user messages only", param=where)
        return {"type": "image_url", "image_url": {"url": _image_url(part, where)}}
    if part.source_format == SOURCE:  # OpenAI content we do not model: pass it through
        return part.raw
    raise ir.invalid_request(
        f"Content of type {part.raw.get('type')!r} from {part.source_format} cannot be "
        "sent to an OpenAI-compatible provider",
        param=where,
    )


def _image_url(part: ir.ImagePart, where: str) -> str:
    if part.url:
        return part.url
    if part.data and part.media_type:
        return f"data:{part.media_type};base64,{part.data}"
    raise ir.invalid_request("An inline image needs data and a media type", param=where)


def _encode_tool(tool: ir.Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters:
        function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def _put_tool_choice(body: dict[str, Any], choice: ir.ToolChoice) -> None:
    if "tools" not in body:
        if choice.mode in ("none", "auto"):
            return  # OpenAI rejects tool_choice without tools; these modes mean nothing then
        raise ir.invalid_request(f"tool_choice {choice.mode!r} needs tools", param="tool_choice")
    if choice.mode == "tool":
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        body["tool_choice"] = choice.mode


def _encode_response_format(rf: ir.ResponseFormat) -> dict[str, Any]:
    if rf.type != "json_schema":
        return {"type": rf.type}
    schema: dict[str, Any] = {"name": rf.name or "response"}
    if rf.schema is not None:
        schema["schema"] = rf.schema
    if rf.strict is not None:
        schema["strict"] = rf.strict
    return {"type": "json_schema", "json_schema": schema}


def decode_response(body: bytes) -> ir.ChatResponse:
    """An upstream chat.completion as IR; an unreadable body raises bad_gateway."""
    wire = _decode_upstream(body, _COMPLETION, "chat completion")
    if not wire.choices:
        raise ir.bad_gateway("upstream chat completion has no choices")
    message = wire.choices[0].message or _Message(role="assistant")
    content: list[ir.Part] = [
        p for p in _decode_parts(message.content, "message") if isinstance(p, ir.TextPart)
    ]
    if message.refusal:
        content.append(ir.TextPart(message.refusal))
    calls = [
        ir.ToolCall(
            id=c.id or ir.invented_call_id(i), name=c.function.name, arguments=c.function.arguments
        )
        for i, c in enumerate(message.tool_calls or ())
    ]
    return ir.ChatResponse(
        id=wire.id,
        model=wire.model,
        content=content,
        tool_calls=calls,
        finish_reason=_finish_reason(wire.choices[0].finish_reason, bool(calls)),
        usage=_usage(wire.usage) if wire.usage is not None else None,
        created=int(wire.created),
    )


def _decode_upstream(body: bytes, decoder: msgspec.json.Decoder[Any], what: str) -> Any:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ir.bad_gateway(f"upstream returned an invalid {what}") from None


def _finish_reason(raw: str | None, has_tool_calls: bool) -> ir.FinishReason:
    reason = _FINISH.get(raw or "stop", "stop")
    # Some compatible servers say "stop" although the model called tools.
    return "tool_calls" if has_tool_calls and reason == "stop" else reason


def _usage(wire: _Usage) -> ir.Usage:
    details, completion = wire.prompt_tokens_details, wire.completion_tokens_details
    return ir.Usage(
        input_tokens=wire.prompt_tokens or 0,
        output_tokens=wire.completion_tokens or 0,
        cached_tokens=(details.cached_tokens or 0) if details else 0,
        reasoning_tokens=(completion.reasoning_tokens or 0) if completion else 0,
    )


class StreamDecoder:
    """Upstream chat.completion.chunk SSE -> IR stream events.

    StreamFinish is held back until the usage chunk or `[DONE]`, so usage always comes
    before finish (encoders such as Anthropic's need both in one event).
    """

    __slots__ = (
        "_cut",
        "_done",
        "_finish",
        "_finish_sent",
        "_last_key",
        "_sse",
        "_started",
        "_tools",
    )

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._started = False
        self._tools: dict[int | str, int] = {}  # upstream index (or id) -> IR index
        self._last_key: int | str = 0
        self._finish: ir.FinishReason | None = None
        self._finish_sent = False
        self._done = False
        self._cut = False

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        for sse in self._sse.feed(chunk):
            self._on_data(sse.data, events)
        return events

    def finish(self) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        self._cut = self._sse.pending  # a half event left over means the connection was cut
        for sse in self._sse.finish():
            self._on_data(sse.data, events)
        if not self._done:
            self._done = True
            if self._finish is not None:  # complete, only the [DONE] line is missing
                self._send_finish(events)
            else:
                info = ir.ErrorInfo(kind="bad_gateway", message=_CUT_MESSAGE)
                events.append(ir.StreamError(info))
        return events

    def _on_data(self, data: str, events: list[ir.StreamEvent]) -> None:
        if self._done:
            return
        if data.strip() == "[DONE]":
            self._done = True
            self._send_finish(events)
            return
        try:
            chunk = _CHUNK.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            message = _CUT_MESSAGE if self._cut else "upstream sent an invalid stream event"
            self._fail(ir.ErrorInfo(kind="bad_gateway", message=message), events)
            return
        if chunk.error is not None:
            self._fail(_stream_error_info(chunk.error), events)
            return
        self._on_chunk(chunk, events)

    def _on_chunk(self, chunk: _Chunk, events: list[ir.StreamEvent]) -> None:
        if not self._started:
            if not (chunk.id or chunk.choices or chunk.usage):
                return  # Azure's prompt_filter_results preamble: no id, model or choices
            self._started = True
            events.append(
                ir.StreamStart(id=chunk.id, model=chunk.model, created=int(chunk.created))
            )
        for choice in chunk.choices:
            if choice.index == 0:
                self._on_choice(choice, events)
        usage = chunk.usage or (chunk.x_groq.usage if chunk.x_groq else None)
        if usage is not None:
            events.append(ir.StreamUsage(_usage(usage)))
            if self._finish is not None:
                self._send_finish(events)

    def _on_choice(self, choice: _ChunkChoice, events: list[ir.StreamEvent]) -> None:
        delta = choice.delta
        if delta is not None:
            if delta.content:
                events.append(ir.TextDelta(delta.content))
            if delta.refusal:
                events.append(ir.TextDelta(delta.refusal))
            for call in delta.tool_calls or ():
                self._on_tool_call(call, events)
        if choice.finish_reason:
            self._finish = _finish_reason(choice.finish_reason, bool(self._tools))

    def _on_tool_call(self, call: _ToolCallDelta, events: list[ir.StreamEvent]) -> None:
        # Some compatible servers omit `index`; then the id (or the last call) identifies it.
        key = call.index if call.index is not None else (call.id or self._last_key)
        self._last_key = key
        index = self._tools.get(key)
        function = call.function
        if index is None:
            index = self._tools[key] = len(self._tools)
            name = function.name if function and function.name else ""
            events.append(
                ir.ToolCallStart(index=index, id=call.id or ir.invented_call_id(index), name=name)
            )
        if function is not None and function.arguments:
            events.append(ir.ToolCallDelta(index=index, arguments=function.arguments))

    def _send_finish(self, events: list[ir.StreamEvent]) -> None:
        if not self._finish_sent:
            self._finish_sent = True
            events.append(ir.StreamFinish(self._finish or "stop"))

    def _fail(self, info: ir.ErrorInfo, events: list[ir.StreamEvent]) -> None:
        self._done = True
        events.append(ir.StreamError(info))


def _stream_error_info(error: Any) -> ir.ErrorInfo:
    """An in-band `{"error": {...}}` chunk; it has no HTTP status, so read type and code."""
    if not isinstance(error, dict):
        error = {"message": error}
    code = error.get("code")
    if isinstance(code, int) and 400 <= code < 600:  # vLLM puts the HTTP status in code
        kind = ir.error_kind_for_status(code)
    else:
        kind = _KIND_BY_TYPE.get(str(code)) or _KIND_BY_TYPE.get(
            str(error.get("type")), "server_error"
        )
    message, param = error.get("message"), error.get("param")
    return ir.ErrorInfo(
        kind=kind,
        message=_scrub(message) if isinstance(message, str) and message else "upstream error",
        param=param if isinstance(param, str) else None,
    )


def decode_error(status: int, body: bytes) -> ir.ErrorInfo:
    """An upstream error response; non-JSON bodies (an HTML 502 page) give a generic text."""
    message, param = _error_fields(body)
    if message is None:
        message = f"upstream returned HTTP {status}"
    return ir.ErrorInfo(
        kind=ir.error_kind_for_status(status), message=_scrub(message), status=status, param=param
    )


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        obj = _ANY.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    error = obj.get("error")
    if isinstance(error, dict):
        message, param = error.get("message"), error.get("param")
        return (
            message if isinstance(message, str) and message else None,
            param if isinstance(param, str) else None,
        )
    # {"error": "text"} (some compatible servers), {"message": ...} (older vLLM),
    # {"detail": ...} (FastAPI-based servers).
    for value in (error, obj.get("message"), obj.get("detail")):
        if isinstance(value, str) and value:
            return value, None
    return None, None


def _scrub(message: str) -> str:
    """Keep credentials that providers echo back (partially masked) out of our errors."""
    return _SECRET.sub("sk-***", message)[:2000]


def embedding_path() -> str:
    return "/v1/embeddings"


def encode_embedding_request(req: ir.EmbeddingRequest, *, model: str) -> bytes:
    body: dict[str, Any] = {"model": model, "input": req.inputs, "encoding_format": "float"}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    return _ENCODER.encode(body)


def decode_embedding_response(body: bytes) -> ir.EmbeddingResponse:
    wire = _decode_upstream(body, _EMBEDDING_LIST, "embedding list")
    items = sorted(wire.data, key=lambda item: item.index)
    try:
        vectors = [
            _from_base64(i.embedding) if isinstance(i.embedding, str) else i.embedding
            for i in items
        ]
    except (binascii.Error, ValueError):
        raise ir.bad_gateway("upstream returned an invalid embedding list") from None
    usage = ir.Usage(input_tokens=wire.usage.prompt_tokens or 0) if wire.usage else None
    return ir.EmbeddingResponse(model=wire.model, vectors=vectors, usage=usage)


def _from_base64(text: str) -> list[float]:
    values = array.array("f", base64.b64decode(text, validate=True))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()
