"""Ollama native API as a client dialect: what a client SDK sends and expects back.

Decodes requests into `extproc.ir`, encodes answers, streams and errors in the
dialect's shape. Pure and synchronous; imports only the IR, framing and this
codec's own modules.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from extproc import ir
from extproc.formats.ollama_chat.wire import (
    _DATA_URL,
    _arguments_text,
    _encode,
    _text,
    _ToolCall,
    _wire_calls,
)

Number = int | float


class _Message(msgspec.Struct):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    images: list[str] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class _FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _ToolDef(msgspec.Struct):
    function: _FunctionDef
    type: str = "function"


class _Options(msgspec.Struct):
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: Number | None = None
    num_predict: Number | None = None
    stop: list[str] | str | None = None
    seed: Number | None = None


Format = str | dict[str, Any] | None


class _ChatRequest(msgspec.Struct):
    model: str | None = None
    messages: list[_Message] | None = None
    tools: list[_ToolDef] | None = None
    format: Format = None
    options: _Options | None = None
    stream: bool | None = None


class _GenerateRequest(msgspec.Struct):
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    images: list[str] | None = None
    suffix: str | None = None
    format: Format = None
    options: _Options | None = None
    stream: bool | None = None


class _EmbedRequest(msgspec.Struct):
    model: str
    input: str | list[str]
    dimensions: int | None = None


_chat_request = msgspec.json.Decoder(_ChatRequest)
_generate_request = msgspec.json.Decoder(_GenerateRequest)
_embed_request = msgspec.json.Decoder(_EmbedRequest)


def _decode_client(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """Decode an untrusted client body; every failure is an invalid_request."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ir.invalid_request(f"invalid request body: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ir.invalid_request("request body is not valid JSON") from None


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _sniff_media_type(data: str) -> str:
    """The media type of base64 image data by its magic bytes; PNG when unknown."""
    try:
        head = base64.b64decode(data[:16] + "=" * (-len(data[:16]) % 4))
    except (binascii.Error, ValueError):
        return "image/png"
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def _image_part(raw: str) -> ir.ImagePart:
    """An Ollama image (bare base64; a data: URL is tolerated) as an IR part."""
    match = _DATA_URL.fullmatch(raw)
    if match:
        data = match.group(2)
        return ir.ImagePart(data=data, media_type=match.group(1) or _sniff_media_type(data))
    return ir.ImagePart(data=raw, media_type=_sniff_media_type(raw))


def _rfc3339(created: int) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _options(opts: _Options | None) -> dict[str, Any]:
    """IR sampling fields from Ollama `options` (other options are runner settings)."""
    if opts is None:
        return {}
    for name in ("top_k", "num_predict", "seed"):
        value = getattr(opts, name)
        if isinstance(value, float) and not value.is_integer():
            raise ir.invalid_request(f"options.{name} must be an integer", param=name)
    stop = [opts.stop] if isinstance(opts.stop, str) else list(opts.stop or [])
    max_tokens = None if opts.num_predict is None else int(opts.num_predict)
    return {
        "temperature": None if opts.temperature is None else float(opts.temperature),
        "top_p": None if opts.top_p is None else float(opts.top_p),
        "top_k": None if opts.top_k is None else int(opts.top_k),
        # num_predict -1 (infinite) and -2 (fill the context) mean "no limit".
        "max_tokens": max_tokens if max_tokens is None or max_tokens >= 0 else None,
        "stop": stop,
        "seed": None if opts.seed is None else int(opts.seed),
    }


def _response_format(fmt: Format) -> ir.ResponseFormat | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return ir.ResponseFormat(type="json_object")
    if isinstance(fmt, dict):
        return ir.ResponseFormat(type="json_schema", schema=fmt)
    raise ir.invalid_request('format must be "json" or a JSON schema object', param="format")


def _tools(tools: list[_ToolDef] | None) -> list[ir.Tool]:
    result = []
    for tool in tools or []:
        if tool.type != "function":
            raise ir.invalid_request(f"unsupported tool type {tool.type!r}", param="tools")
        fn = tool.function
        result.append(ir.Tool(fn.name, fn.description, fn.parameters or {}))
    return result


class _ToolIds:
    """Gives tool calls ids by position and matches tool results to pending calls."""

    def __init__(self) -> None:
        self.count = 0
        self.pending: list[ir.ToolCall] = []

    def calls(self, wire: list[_ToolCall]) -> list[ir.ToolCall]:
        calls = []
        for call in wire:
            call_id = call.id or ir.invented_call_id(self.count)
            self.count += 1
            args = _arguments_text(call.function.arguments)
            calls.append(ir.ToolCall(call_id, call.function.name, args))
        self.pending = list(calls)
        return calls

    def result(self, msg: _Message) -> tuple[str | None, str | None]:
        """(tool_call_id, name) of a tool result: by id, else by name, else by order."""
        match = next((c for c in self.pending if c.id == msg.tool_call_id), None)
        if match is None and msg.tool_name:
            match = next((c for c in self.pending if c.name == msg.tool_name), None)
        if match is None and not msg.tool_call_id and not msg.tool_name and self.pending:
            match = self.pending[0]
        if match is None:
            return msg.tool_call_id, msg.tool_name
        self.pending.remove(match)
        return match.id, msg.tool_name or match.name


def _message(msg: _Message, ids: _ToolIds) -> ir.Message:
    content: list[ir.Part] = [_image_part(image) for image in msg.images or []]
    if msg.content:
        content.append(ir.TextPart(msg.content))
    if msg.role == "tool":
        call_id, name = ids.result(msg)
        return ir.Message("tool", content, tool_call_id=call_id, name=name)
    if msg.role == "assistant":
        return ir.Message("assistant", content, ids.calls(msg.tool_calls or []))
    return ir.Message("user", content)


def _model(model: str | None, path_model: str | None) -> str:
    model = model or path_model
    if not model:
        raise ir.invalid_request("`model` is required", param="model")
    return model


def decode_request(
    body: bytes, *, path_model: str | None = None, path_stream: bool = False
) -> ir.ChatRequest:
    """An Ollama /api/chat request body as an IR chat request."""
    req: _ChatRequest = _decode_client(_chat_request, body)
    if not req.messages:
        raise ir.invalid_request("`messages` must be a non-empty list", param="messages")
    ids = _ToolIds()
    system = [m.content for m in req.messages if m.role == "system" and m.content]
    return ir.ChatRequest(
        model=_model(req.model, path_model),
        messages=[_message(m, ids) for m in req.messages if m.role != "system"],
        system="\n\n".join(system) or None,
        tools=_tools(req.tools),
        response_format=_response_format(req.format),
        stream=req.stream is not False,
        **_options(req.options),
    )


def decode_generate_request(body: bytes) -> ir.ChatRequest:
    """An Ollama /api/generate request body as an IR chat request (one user turn)."""
    req: _GenerateRequest = _decode_client(_generate_request, body)
    if req.prompt is None:
        raise ir.invalid_request("`prompt` is required", param="prompt")
    if req.suffix:
        raise ir.invalid_request("`suffix` (fill-in-the-middle) is not supported", param="suffix")
    content: list[ir.Part] = [_image_part(image) for image in req.images or []]
    if req.prompt:
        content.append(ir.TextPart(req.prompt))
    return ir.ChatRequest(
        model=_model(req.model, None),
        messages=[ir.Message("user", content)],
        system=req.system or None,
        response_format=_response_format(req.format),
        stream=req.stream is not False,
        **_options(req.options),
    )


_DONE_REASON = {"length": "length"}  # tool_calls, content_filter, error -> "stop"


def _metrics(usage: ir.Usage | None) -> dict[str, int]:
    usage = usage or ir.Usage()
    return {
        "total_duration": 0,
        "load_duration": 0,
        "prompt_eval_count": usage.input_tokens,
        "prompt_eval_duration": 0,
        "eval_count": usage.output_tokens,
        "eval_duration": 0,
    }


def encode_response(resp: ir.ChatResponse) -> bytes:
    """An IR response as an Ollama /api/chat (stream false) response body."""
    message: dict[str, Any] = {"role": "assistant", "content": _text(resp.content)}
    if resp.tool_calls:
        try:
            message["tool_calls"] = _wire_calls(resp.tool_calls)
        except ValueError as exc:
            raise ir.bad_gateway(str(exc)) from None
    return _encode(
        {
            "model": resp.model,
            "created_at": _rfc3339(resp.created),
            "message": message,
            "done": True,
            "done_reason": _DONE_REASON.get(resp.finish_reason, "stop"),
            **_metrics(resp.usage),
        }
    )


def encode_generate_response(resp: ir.ChatResponse) -> bytes:
    """An IR response as an Ollama /api/generate (stream false) response body."""
    return _encode(
        {
            "model": resp.model,
            "created_at": _rfc3339(resp.created),
            "response": _text(resp.content),
            "done": True,
            "done_reason": _DONE_REASON.get(resp.finish_reason, "stop"),
            **_metrics(resp.usage),
        }
    )


def encode_error(err: ir.ErrorInfo) -> bytes:
    """Ollama's error body (also its in-band stream error line, without the newline)."""
    return _encode({"error": err.message})


def _merge_usage(old: ir.Usage | None, new: ir.Usage) -> ir.Usage:
    """Later usage events win field by field; zero means "not reported"."""
    if old is None:
        return new
    return ir.Usage(
        input_tokens=new.input_tokens or old.input_tokens,
        output_tokens=new.output_tokens or old.output_tokens,
        cached_tokens=new.cached_tokens or old.cached_tokens,
    )


class StreamEncoder:
    """IR stream events -> Ollama /api/chat NDJSON lines.

    Text deltas go out at once; tool calls are collected and sent whole in one line
    at the finish event (Ollama never streams argument fragments); the `done: true`
    line goes out at finish(), because usage may follow the finish event.
    """

    def __init__(self, *, include_usage: bool = True) -> None:
        self._model = ""
        self._created_at = _rfc3339(0)
        self._calls: dict[int, tuple[str, str, list[str]]] = {}
        self._tool_index = 0
        self._finish: ir.FinishReason | None = None
        self._usage: ir.Usage | None = None
        self._closed = False

    def feed(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if self._closed:
                break
            self._event(event, out)
        return b"".join(out)

    def finish(self) -> bytes:
        if self._closed:
            return b""
        out: list[bytes] = []
        if self._finish is None:
            self._error("upstream stream ended before completion", out)
            return b"".join(out)
        self._flush_calls(out)
        if not self._closed:
            self._closed = True
            done = {"done": True, "done_reason": _DONE_REASON.get(self._finish, "stop")}
            out.append(self._line(self._body(""), done | _metrics(self._usage)))
        return b"".join(out)

    def _event(self, event: ir.StreamEvent, out: list[bytes]) -> None:
        if isinstance(event, ir.TextDelta):
            if event.text:
                out.append(self._line(self._body(event.text), {"done": False}))
        elif isinstance(event, ir.ToolCallStart):
            self._calls[event.index] = (event.id, event.name, [])
        elif isinstance(event, ir.ToolCallDelta) and event.index in self._calls:
            self._calls[event.index][2].append(event.arguments)
        elif isinstance(event, ir.StreamUsage):
            self._usage = _merge_usage(self._usage, event.usage)
        elif isinstance(event, ir.StreamFinish):
            self._finish = event.finish_reason
            self._flush_calls(out)
        elif isinstance(event, ir.StreamError):
            self._error(event.error.message, out)
        elif isinstance(event, ir.StreamStart):
            self._model, self._created_at = event.model, _rfc3339(event.created)

    def _flush_calls(self, out: list[bytes]) -> None:
        if not self._calls:
            return
        calls = [ir.ToolCall(i, n, "".join(a)) for _, (i, n, a) in sorted(self._calls.items())]
        self._calls = {}
        try:
            wire = _wire_calls(calls, self._tool_index)
        except ValueError as exc:
            self._error(str(exc), out)
            return
        self._tool_index += len(wire)
        self._emit_calls(wire, out)

    def _emit_calls(self, wire: list[dict[str, Any]], out: list[bytes]) -> None:
        body = self._body("")
        body["message"]["tool_calls"] = wire
        out.append(self._line(body, {"done": False}))

    def _error(self, message: str, out: list[bytes]) -> None:
        self._closed = True
        out.append(_encode({"error": message}) + b"\n")

    def _body(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}

    def _line(self, body: dict[str, Any], tail: dict[str, Any]) -> bytes:
        head = {"model": self._model, "created_at": self._created_at}
        return _encode(head | body | tail) + b"\n"


class GenerateStreamEncoder(StreamEncoder):
    """IR stream events -> Ollama /api/generate NDJSON lines (`response` deltas)."""

    def _body(self, text: str) -> dict[str, Any]:
        return {"response": text}

    def _emit_calls(self, wire: list[dict[str, Any]], out: list[bytes]) -> None:
        """/api/generate has no tools, so a model's tool call cannot be shown."""


def encode_tags(names: list[str]) -> bytes:
    """An Ollama /api/tags body listing the client-visible model names."""
    details = {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": [],
        "parameter_size": "",
        "quantization_level": "",
    }
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": _rfc3339(0),
            "size": 0,
            "digest": "",
            "details": details,
        }
        for name in names
    ]
    return _encode({"models": models})


def decode_embedding_request(body: bytes) -> ir.EmbeddingRequest:
    """An Ollama /api/embed request body as an IR embedding request."""
    req: _EmbedRequest = _decode_client(_embed_request, body)
    inputs = [req.input] if isinstance(req.input, str) else req.input
    if not req.model:
        raise ir.invalid_request("`model` is required", param="model")
    if not inputs:
        raise ir.invalid_request("`input` must not be empty", param="input")
    return ir.EmbeddingRequest(model=req.model, inputs=inputs, dimensions=req.dimensions)


def encode_embedding_response(resp: ir.EmbeddingResponse) -> bytes:
    usage = resp.usage or ir.Usage()
    return _encode(
        {
            "model": resp.model,
            "embeddings": resp.vectors,
            "total_duration": 0,
            "load_duration": 0,
            "prompt_eval_count": usage.input_tokens,
        }
    )
