"""OpenAI Chat Completions as a client dialect: what a client SDK sends and expects back.

Decodes requests into `extproc.ir`, encodes answers, streams and errors in the
dialect's shape. Pure and synchronous; imports only the IR, framing and this
codec's own modules.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Any, Literal

import msgspec

from extproc import ir
from extproc.formats.framing import sse_event
from extproc.formats.openai_chat.wire import (
    _CUT_MESSAGE,
    _ENCODER,
    _decode_parts,
    _encode_tool_call,
    _Message,
)

_DONE = b"data: [DONE]\n\n"


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
    prompt_cache_key: str | None = None
    n: int | None = None
    functions: Any = None  # legacy function calling: rejected, not silently ignored


class _EmbeddingRequest(msgspec.Struct):
    model: str | None = None
    input: str | list[Any] | None = None
    dimensions: int | None = None
    encoding_format: str | None = None


_REQUEST = msgspec.json.Decoder(_Request)
_EMBEDDING_REQUEST = msgspec.json.Decoder(_EmbeddingRequest)

_TOOL_MODES: dict[str, Literal["auto", "none", "required"]] = {
    "auto": "auto",
    "none": "none",
    "required": "required",
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
        prompt_cache_key=wire.prompt_cache_key,
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
    return ir.EmbeddingRequest(
        model=wire.model,
        inputs=inputs,
        dimensions=wire.dimensions,
        encoding_format="base64" if wire.encoding_format == "base64" else "float",
    )


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


def _to_base64(vector: list[float]) -> str:
    """Little-endian float32, as OpenAI's base64 encoding_format."""
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def encode_model_list(names: list[str], owned_by: str = "llmux") -> bytes:
    """GET /v1/models: OpenAI's list of model objects."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": owned_by} for name in names]
    return _ENCODER.encode({"object": "list", "data": data})
