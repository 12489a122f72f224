"""OpenAI Chat Completions wire format, both as client dialect and as provider.

Owns the translation between `extproc.ir` and OpenAI's JSON as documented at
https://platform.openai.com/docs/api-reference/chat (also spoken by Azure OpenAI and
OpenAI-compatible servers such as vLLM and Groq): requests, responses, the
`chat.completion.chunk` SSE stream in both directions, error bodies, embeddings
(/v1/embeddings) and the model list (GET /v1/models).

Pure and synchronous: no I/O, no state outside the per-stream objects, no imports of
other format modules. Module-level msgspec decoders/encoders are stateless.
"""

from __future__ import annotations

import array
import base64
import binascii
import re
import sys
from typing import Any, Literal

import msgspec

from extproc import ir
from extproc.formats.framing import SSEParser, sse_event

SOURCE = "openai_chat"
STREAM_CONTENT_TYPE = "text/event-stream"
_DONE = b"data: [DONE]\n\n"
_CUT_MESSAGE = "upstream stream ended before completion"

# ---------------------------------------------------------------- wire shapes (decoding)


class _Function(msgspec.Struct):
    name: str
    arguments: str = ""


class _ToolCall(msgspec.Struct):
    function: _Function
    id: str | None = None
    type: str = "function"


class _Message(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None


class _FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _Tool(msgspec.Struct):
    type: str = "function"
    function: _FunctionDef | None = None


class _JsonSchema(msgspec.Struct):
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class _ResponseFormat(msgspec.Struct):
    type: str
    json_schema: _JsonSchema | None = None


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _Request(msgspec.Struct):
    """A client request. Unknown fields (including api_base/base_url) are ignored."""

    model: str | None = None
    messages: list[_Message] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI; vLLM and others accept it
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: _ResponseFormat | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    user: str | None = None
    n: int | None = None
    functions: Any = None  # legacy function calling: rejected, not silently ignored


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None


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


class _EmbeddingRequest(msgspec.Struct):
    model: str | None = None
    input: str | list[Any] | None = None
    dimensions: int | None = None
    encoding_format: str | None = None


class _EmbeddingItem(msgspec.Struct):
    embedding: list[float] | str
    index: int = 0


class _EmbeddingList(msgspec.Struct):
    data: list[_EmbeddingItem]
    model: str = ""
    usage: _Usage | None = None


_REQUEST = msgspec.json.Decoder(_Request)
_COMPLETION = msgspec.json.Decoder(_Completion)
_CHUNK = msgspec.json.Decoder(_Chunk)
_EMBEDDING_REQUEST = msgspec.json.Decoder(_EmbeddingRequest)
_EMBEDDING_LIST = msgspec.json.Decoder(_EmbeddingList)
_ANY = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()

_TOOL_MODES: dict[str, Literal["auto", "none", "required"]] = {
    "auto": "auto",
    "none": "none",
    "required": "required",
}
_FINISH: dict[str, ir.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
}
# ErrorKind -> OpenAI error (type, code). OpenAI documents types such as
# invalid_request_error, rate_limit_error, service_unavailable_error.
_ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request": ("invalid_request_error", None),
    "authentication": ("authentication_error", "invalid_api_key"),
    "permission": ("permission_error", None),
    "not_found": ("not_found_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("rate_limit_error", "rate_limit_exceeded"),
    "server_error": ("server_error", None),
    "bad_gateway": ("server_error", "bad_gateway"),
    "overloaded": ("service_unavailable_error", "server_is_overloaded"),
    "timeout": ("timeout_error", "timeout"),
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


# ================================================================ client side: requests


def decode_request(
    body: bytes, *, path_model: str | None = None, path_stream: bool = False
) -> ir.ChatRequest:
    """A client's chat.completions request as IR; bad input raises invalid_request."""
    wire = _decode_client(body, _REQUEST)
    model = wire.model or path_model
    if not model:
        raise ir.invalid_request("'model' is required", param="model")
    if not wire.messages:
        raise ir.invalid_request("'messages' must be a non-empty array", param="messages")
    _reject_unsupported(wire)
    system, messages = _decode_messages(wire.messages)
    stream = bool(wire.stream) or path_stream
    options = wire.stream_options
    return ir.ChatRequest(
        model=model,
        messages=messages,
        system=system,
        tools=_decode_tools(wire.tools),
        tool_choice=_decode_tool_choice(wire.tool_choice),
        parallel_tool_calls=wire.parallel_tool_calls,
        response_format=_decode_response_format(wire.response_format),
        temperature=wire.temperature,
        top_p=wire.top_p,
        top_k=wire.top_k,
        max_tokens=(
            wire.max_completion_tokens
            if wire.max_completion_tokens is not None
            else wire.max_tokens
        ),
        stop=[wire.stop] if isinstance(wire.stop, str) else list(wire.stop or ()),
        seed=wire.seed,
        stream=stream,
        stream_include_usage=bool(stream and options and options.include_usage),
        user=wire.user,
    )


def _decode_client(body: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ir.invalid_request(f"Invalid request body: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ir.invalid_request("Request body is not valid JSON") from None


def _reject_unsupported(wire: _Request) -> None:
    if wire.n is not None and wire.n != 1:
        raise ir.invalid_request("Only n=1 is supported", param="n")
    if wire.functions is not None:
        raise ir.invalid_request(
            "Legacy 'functions' are not supported; use 'tools'", param="functions"
        )


def _decode_messages(wire: list[_Message]) -> tuple[str | None, list[ir.Message]]:
    system: list[str] = []
    messages: list[ir.Message] = []
    tool_names: dict[str, str] = {}  # tool_call id -> function name, for tool results
    for i, m in enumerate(wire):
        where = f"messages[{i}]"
        if m.role in ("system", "developer"):
            system.append(_system_text(m.content, where))
        elif m.role == "user":
            messages.append(ir.Message(role="user", content=_decode_parts(m.content, where)))
        elif m.role == "assistant":
            messages.append(_decode_assistant(m, where, tool_names))
        elif m.role == "tool":
            messages.append(_decode_tool_result(m, where, tool_names))
        else:
            raise ir.invalid_request(f"Unsupported message role {m.role!r}", param=f"{where}.role")
    return ("\n\n".join(system) if system else None), messages


def _system_text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    texts = []
    for part in _decode_parts(content, where):
        if not isinstance(part, ir.TextPart):
            raise ir.invalid_request("System messages may contain text only", param=where)
        texts.append(part.text)
    return "\n".join(texts)


def _decode_parts(content: str | list[dict[str, Any]] | None, where: str) -> list[ir.Part]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [ir.TextPart(content)]
    return [_decode_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]


def _decode_part(part: dict[str, Any], where: str) -> ir.Part:
    kind = part.get("type")
    if kind in ("text", "refusal"):
        text = part.get(kind)
        if not isinstance(text, str):
            raise ir.invalid_request(f"Content part of type {kind!r} needs a string", param=where)
        return ir.TextPart(text)
    if kind == "image_url":
        return _decode_image(part.get("image_url"), where)
    return ir.UnknownPart(source_format=SOURCE, raw=part)


def _decode_image(image: Any, where: str) -> ir.ImagePart:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return ir.ImagePart(url=url)
    if isinstance(url, str) and url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type = header.removesuffix(";base64")
        if sep and header.endswith(";base64") and media_type and data:
            return ir.ImagePart(data=data, media_type=media_type)
        raise ir.invalid_request(
            "Image data: URLs must look like data:<media type>;base64,<data>", param=where
        )
    raise ir.invalid_request("image_url.url must be an http(s) or data: URL", param=where)


def _decode_assistant(m: _Message, where: str, tool_names: dict[str, str]) -> ir.Message:
    content = _decode_parts(m.content, where)
    if m.refusal:
        content.append(ir.TextPart(m.refusal))
    calls = []
    for j, call in enumerate(m.tool_calls or ()):
        if not call.id:
            raise ir.invalid_request("Tool calls need an 'id'", param=f"{where}.tool_calls[{j}]")
        calls.append(
            ir.ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
        )
        tool_names[call.id] = call.function.name
    return ir.Message(role="assistant", content=content, tool_calls=calls)


def _decode_tool_result(m: _Message, where: str, tool_names: dict[str, str]) -> ir.Message:
    call_id = m.tool_call_id
    if not call_id:
        raise ir.invalid_request("Tool messages need 'tool_call_id'", param=f"{where}.tool_call_id")
    name = tool_names.get(call_id)
    if name is None:
        raise ir.invalid_request(
            f"Tool message answers tool_call_id {call_id!r}, which no earlier assistant "
            "message's tool_calls contains",
            param=f"{where}.tool_call_id",
        )
    content = _decode_parts(m.content, where)
    return ir.Message(role="tool", content=content, tool_call_id=call_id, name=name)


def _decode_tools(tools: list[_Tool] | None) -> list[ir.Tool]:
    out = []
    for i, tool in enumerate(tools or ()):
        fn = tool.function
        if tool.type != "function" or fn is None:
            raise ir.invalid_request(
                f"Only function tools are supported, got type {tool.type!r}", param=f"tools[{i}]"
            )
        out.append(
            ir.Tool(name=fn.name, description=fn.description, parameters=fn.parameters or {})
        )
    return out


def _decode_tool_choice(choice: str | dict[str, Any] | None) -> ir.ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return ir.ToolChoice(mode=_TOOL_MODES[choice])
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            return ir.ToolChoice(mode="tool", name=name)
    raise ir.invalid_request(
        "tool_choice must be 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def _decode_response_format(rf: _ResponseFormat | None) -> ir.ResponseFormat | None:
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return ir.ResponseFormat(type="json_object")
    if rf.type == "json_schema":
        js = rf.json_schema
        if js is None:
            raise ir.invalid_request(
                "response_format of type json_schema needs 'json_schema'",
                param="response_format.json_schema",
            )
        return ir.ResponseFormat(
            type="json_schema", schema=js.schema, name=js.name, strict=js.strict
        )
    raise ir.invalid_request(
        f"Unsupported response_format type {rf.type!r}", param="response_format.type"
    )


# ================================================================ client side: responses


def encode_response(resp: ir.ChatResponse) -> bytes:
    """A chat.completion object for a non-streaming client."""
    text = "".join(p.text for p in resp.content if isinstance(p, ir.TextPart))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if not text and resp.tool_calls else text,
        "refusal": None,
    }
    if resp.tool_calls:
        message["tool_calls"] = [_encode_tool_call(c) for c in resp.tool_calls]
    body: dict[str, Any] = {
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _client_finish(resp.finish_reason),
            }
        ],
    }
    if resp.usage is not None:
        body["usage"] = _encode_usage(resp.usage)
    return _ENCODER.encode(body)


def _client_finish(reason: ir.FinishReason) -> str:
    # OpenAI has no "error" finish reason; the error itself travels separately.
    return "stop" if reason == "error" else reason


def _encode_tool_call(call: ir.ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _encode_usage(usage: ir.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def encode_error(err: ir.ErrorInfo) -> bytes:
    """OpenAI's error body; the HTTP status is err.http_status."""
    return _ENCODER.encode({"error": _error_object(err)})


def _error_object(err: ir.ErrorInfo) -> dict[str, Any]:
    kind, code = _ERROR_TYPES.get(err.kind, ("server_error", None))
    return {"message": err.message, "type": kind, "param": err.param, "code": code}


class StreamEncoder:
    """IR stream events -> chat.completion.chunk SSE events for a client.

    When the client asked for usage, the usage chunk and `data: [DONE]` are sent by
    finish(), so the last usage reported wins whatever the event order; otherwise
    `[DONE]` follows the finish chunk at once.
    """

    __slots__ = (
        "_created",
        "_done",
        "_finished",
        "_id",
        "_include_usage",
        "_model",
        "_started",
        "_usage",
    )

    def __init__(self, *, include_usage: bool = True) -> None:
        self._include_usage = include_usage
        self._id = "chatcmpl-llmux"
        self._model = ""
        self._created = 0
        self._started = False
        self._finished = False
        self._done = False
        self._usage: ir.Usage | None = None

    def feed(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if self._done:
                break
            out.append(self._event(event))
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        if not self._finished:  # never a silent clean end
            err = ir.ErrorInfo(kind="bad_gateway", message=_CUT_MESSAGE)
            return sse_event(_ENCODER.encode({"error": _error_object(err)})) + _DONE
        if self._include_usage and self._usage is not None:
            return self._usage_chunk(self._usage) + _DONE
        return _DONE

    def _event(self, event: ir.StreamEvent) -> bytes:
        if isinstance(event, ir.StreamStart):
            self._id, self._model, self._created = event.id, event.model, event.created
            return self._start()
        if isinstance(event, ir.TextDelta):
            return (self._start() + self._chunk({"content": event.text})) if event.text else b""
        if isinstance(event, ir.ToolCallStart):
            function = {"name": event.name, "arguments": ""}
            call = {"index": event.index, "id": event.id, "type": "function", "function": function}
            return self._start() + self._chunk({"tool_calls": [call]})
        if isinstance(event, ir.ToolCallDelta):
            call = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._start() + self._chunk({"tool_calls": [call]})
        if isinstance(event, ir.StreamUsage):
            self._usage = event.usage
            return b""
        if isinstance(event, ir.StreamFinish):
            head = self._start()
            self._finished = True
            tail = b""
            if not self._include_usage:  # nothing more to wait for: terminate now
                self._done, tail = True, _DONE
            return head + self._chunk({}, _client_finish(event.finish_reason)) + tail
        self._done = True  # StreamError: OpenAI's in-band error shape, then the terminator
        return sse_event(_ENCODER.encode({"error": _error_object(event.error)})) + _DONE

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse_event(_ENCODER.encode(self._envelope([choice])))

    def _usage_chunk(self, usage: ir.Usage) -> bytes:
        body = self._envelope([])
        body["usage"] = _encode_usage(usage)
        return sse_event(_ENCODER.encode(body))

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }


# ================================================================ provider side: requests


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
    ):
        if value is not None:
            body[key] = value
    if req.stop:
        body["stop"] = req.stop


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


# ================================================================ provider side: responses


def decode_response(body: bytes) -> ir.ChatResponse:
    """An upstream chat.completion as IR; an unreadable body raises bad_gateway."""
    wire = _decode_upstream(body, _COMPLETION, "chat completion")
    if not wire.choices:
        raise _bad_gateway("upstream chat completion has no choices")
    message = wire.choices[0].message or _Message(role="assistant")
    content: list[ir.Part] = [
        p for p in _decode_parts(message.content, "message") if isinstance(p, ir.TextPart)
    ]
    if message.refusal:
        content.append(ir.TextPart(message.refusal))
    calls = [
        ir.ToolCall(id=c.id or f"call_{i}", name=c.function.name, arguments=c.function.arguments)
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
        raise _bad_gateway(f"upstream returned an invalid {what}") from None


def _bad_gateway(message: str) -> ir.GatewayError:
    return ir.GatewayError(ir.ErrorInfo(kind="bad_gateway", message=message))


def _finish_reason(raw: str | None, has_tool_calls: bool) -> ir.FinishReason:
    reason = _FINISH.get(raw or "stop", "stop")
    # Some compatible servers say "stop" although the model called tools.
    return "tool_calls" if has_tool_calls and reason == "stop" else reason


def _usage(wire: _Usage) -> ir.Usage:
    details = wire.prompt_tokens_details
    return ir.Usage(
        input_tokens=wire.prompt_tokens or 0,
        output_tokens=wire.completion_tokens or 0,
        cached_tokens=(details.cached_tokens or 0) if details else 0,
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
            events.append(ir.ToolCallStart(index=index, id=call.id or f"call_{index}", name=name))
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


# ================================================================ embeddings and models


def embedding_path() -> str:
    return "/v1/embeddings"


def decode_embedding_request(body: bytes) -> ir.EmbeddingRequest:
    wire = _decode_client(body, _EMBEDDING_REQUEST)
    if not wire.model:
        raise ir.invalid_request("'model' is required", param="model")
    inputs = [wire.input] if isinstance(wire.input, str) else wire.input
    if not inputs:
        raise ir.invalid_request("'input' must be a string or a non-empty array", param="input")
    if not all(isinstance(text, str) for text in inputs):
        raise ir.invalid_request(
            "'input' must be a string or an array of strings; token arrays are not supported",
            param="input",
        )
    if wire.encoding_format not in (None, "float", "base64"):
        raise ir.invalid_request(
            "encoding_format must be 'float' or 'base64'", param="encoding_format"
        )
    return ir.EmbeddingRequest(model=wire.model, inputs=inputs, dimensions=wire.dimensions)


def encode_embedding_response(
    resp: ir.EmbeddingResponse, *, encoding_format: Literal["float", "base64"] = "float"
) -> bytes:
    """OpenAI's embedding list. The openai SDK asks for base64 by default but accepts floats."""
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _to_base64(vector) if encoding_format == "base64" else vector,
        }
        for i, vector in enumerate(resp.vectors)
    ]
    tokens = resp.usage.input_tokens if resp.usage else 0
    return _ENCODER.encode(
        {
            "object": "list",
            "data": data,
            "model": resp.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


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
        raise _bad_gateway("upstream returned an invalid embedding list") from None
    usage = ir.Usage(input_tokens=wire.usage.prompt_tokens or 0) if wire.usage else None
    return ir.EmbeddingResponse(model=wire.model, vectors=vectors, usage=usage)


def _to_base64(vector: list[float]) -> str:
    """Little-endian float32, as OpenAI's base64 encoding_format."""
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def _from_base64(text: str) -> list[float]:
    values = array.array("f", base64.b64decode(text, validate=True))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def encode_model_list(names: list[str], owned_by: str = "llmux") -> bytes:
    """GET /v1/models: OpenAI's list of model objects."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": owned_by} for name in names]
    return _ENCODER.encode({"object": "list", "data": data})
