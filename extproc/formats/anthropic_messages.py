"""Anthropic Messages API codec (`POST /v1/messages`), client side and provider side.

Owns the Anthropic wire format — request JSON, the `message` object, the named-event
SSE stream and the error JSON — and its translation to and from `extproc.ir`. Pure
and synchronous: no I/O, no module state beyond stateless msgspec encoders, imports
only `ir` and `framing`.

Docs: https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/docs/build-with-claude/streaming,
https://docs.anthropic.com/en/api/errors,
https://platform.claude.com/docs/en/build-with-claude/structured-outputs.

Quirks and deliberate losses:
* `tool_result` blocks live inside user turns; they become IR "tool" messages (the
  function name is looked up from the earlier `tool_use` with the same id). Going
  upstream, tool messages fold back into user turns and consecutive same-role turns
  are merged, because Anthropic requires user/assistant alternation.
* Anthropic `input_tokens` excludes prompt-cache reads and writes; IR input_tokens
  includes them (cache writes fold into plain input tokens, reads into cached_tokens).
* JSON schema output is `output_config.format` (GA; the beta `output_format` is read
  too). There is no schema-less JSON mode, so IR json_object is refused upstream.
* Dropped, not represented in the IR: assistant `thinking`/`redacted_thinking`
  blocks, `tool_result.is_error`, `cache_control`, `tools[].strict`, the top-level
  `thinking` / `output_config.effort` settings, and (upstream) the IR seed, which is
  a sampling hint Anthropic has no parameter for.
* Content the IR does not model survives as `UnknownPart(source_format="anthropic")`
  and is sent back verbatim to Anthropic; other formats' unknown parts are refused.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir
from extproc.formats.framing import SSEEvent, SSEParser, sse_event

STREAM_CONTENT_TYPE = "text/event-stream"
SOURCE_FORMAT = "anthropic"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; other dialects make it optional
_MAX_ERROR_MESSAGE = 2000

_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode

_FINISH_REASON: dict[str, ir.FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASON: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}
_TOOL_CHOICE_IN: dict[str, str] = {
    "auto": "auto",
    "any": "required",
    "tool": "tool",
    "none": "none",
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


# ---------------------------------------------------------------- field validation


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


# ---------------------------------------------------------------- client: request


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


# ---------------------------------------------------------------- client: response


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


def _tool_use_block(call: ir.ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


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


# ---------------------------------------------------------------- client: stream


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


# ---------------------------------------------------------------- provider: request


def upstream_path(*, model: str, stream: bool) -> str:
    return "/v1/messages"


def encode_request(req: ir.ChatRequest, *, model: str) -> bytes:
    """IR -> Anthropic request body for `model`. The IR seed is dropped (no equivalent)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": _encode_messages(req.messages),
    }
    if req.system:
        body["system"] = req.system
    body.update(_sampling(req))
    if req.stream:
        body["stream"] = True
    if req.tools:
        body["tools"] = [_encode_tool(tool) for tool in req.tools]
    choice = _encode_tool_choice(req)
    if choice:
        body["tool_choice"] = choice
    if req.response_format is not None and req.response_format.type != "text":
        body["output_config"] = {"format": _encode_output_format(req.response_format)}
    if req.user:
        body["metadata"] = {"user_id": req.user}
    return _encode_json(body)


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
        return blocks
    if message.role != "tool":
        return blocks
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": _result_id(message, history)}
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        result["content"] = blocks[0]["text"]
    elif blocks:
        result["content"] = blocks
    return [result]


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
        return {"type": "text", "text": part.text} if part.text else None  # empty is refused
    if isinstance(part, ir.ImagePart):
        return {"type": "image", "source": _image_source(part, where)}
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
    return out


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


# ---------------------------------------------------------------- provider: response


def _bad_gateway(message: str) -> ir.GatewayError:
    return ir.GatewayError(ir.ErrorInfo(kind="bad_gateway", message=message))


def decode_response(body: bytes) -> ir.ChatResponse:
    """Anthropic `message` object -> IR response."""
    try:
        obj = _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise _bad_gateway("anthropic returned a response that is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("content"), list):
        raise _bad_gateway("anthropic returned a response that is not a message")
    parts: list[ir.Part] = []
    calls: list[ir.ToolCall] = []
    for block in obj["content"]:
        if not isinstance(block, dict):
            raise _bad_gateway("anthropic returned a malformed content block")
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


# ---------------------------------------------------------------- provider: stream


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
        elif kind == "content_block_start":
            self._block_start(data, out)
        elif kind == "content_block_delta":
            self._block_delta(data, out)
        elif kind == "message_delta":
            delta = data.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if reason is not None:
                out.append(ir.StreamFinish(finish_reason=_finish_reason(reason)))
            _usage_counts(data.get("usage"), self._counts)
            out.append(ir.StreamUsage(usage=_ir_usage(self._counts)))
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
        # thinking_delta, signature_delta, citations_delta: not in the IR
