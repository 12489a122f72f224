"""Anthropic Messages client requests: a `POST /v1/messages` body read into `extproc.ir`.

The fixed shapes (the request, its messages, tools, tool_choice, output format and
the known content blocks) are msgspec Structs; content blocks of other types stay
raw and survive as `UnknownPart`. A wrong value is a 400 naming the field the way
Anthropic does ("messages[0].content[0].text: field required"). Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from extproc import ir
from extproc.formats.anthropic_messages.wire import _TOOL_CHOICE_IN, SOURCE_FORMAT, _encode_json

_T = TypeVar("_T")
Block = dict[str, Any]


class _CacheControl(msgspec.Struct):
    type: str = "ephemeral"  # the only kind Anthropic documents
    ttl: str | None = None


class _Message(msgspec.Struct):
    content: str | list[Block]
    role: str | None = None  # checked by hand, to name the two roles in the error


class _ToolChoice(msgspec.Struct):
    type: object = None  # checked against the known modes, to name them in the error
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Format(msgspec.Struct):
    type: object = None
    schema: dict[str, Any] | None = None


class _OutputConfig(msgspec.Struct):
    format: Block | None = None


class _Metadata(msgspec.Struct):
    user_id: str | None = None


class _Request(msgspec.Struct):
    model: str
    messages: list[_Message]
    max_tokens: int | None = None  # required by /v1/messages, absent from count_tokens
    system: str | list[Any] | None = None
    tools: list[Block] | None = None
    tool_choice: _ToolChoice | None = None
    output_config: _OutputConfig | None = None
    output_format: Block | None = None  # the beta name of output_config.format
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    metadata: _Metadata | None = None
    cache_control: _CacheControl | None = None  # automatic caching: the last cacheable block


class _Cached(msgspec.Struct):
    """Any block's `cache_control` (a tool_use's or tool_result's breakpoint)."""

    cache_control: _CacheControl | None = None


class _Tool(msgspec.Struct):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    cache_control: _CacheControl | None = None


class _Text(msgspec.Struct):
    text: str
    cache_control: _CacheControl | None = None


class _ToolUse(msgspec.Struct):
    id: str
    name: str
    input: dict[str, Any] | None = None


class _ToolResult(msgspec.Struct):
    tool_use_id: str
    content: str | list[Block] | None = None


class _Image(msgspec.Struct):
    source: dict[str, Any]
    cache_control: _CacheControl | None = None


class _Base64Source(msgspec.Struct):
    data: str
    media_type: str


class _UrlSource(msgspec.Struct):
    url: str


_REQUEST = msgspec.json.Decoder(_Request)


def decode_request(
    body: bytes, *, path_model: str | None = None, path_stream: bool = False
) -> ir.ChatRequest:
    """Anthropic request body -> IR. The model and stream flag live in the body."""
    req = _load(body)
    if req.max_tokens is None:
        raise ir.invalid_request("max_tokens: field required", param="max_tokens")
    if req.max_tokens < 1:
        raise ir.invalid_request("max_tokens: must be at least 1", param="max_tokens")
    return _to_ir(req, stream=bool(req.stream))


def decode_count_request(body: bytes) -> ir.ChatRequest:
    """A `POST /v1/messages/count_tokens` body: a messages request without max_tokens."""
    return _to_ir(_load(body), stream=False)


def _to_ir(req: _Request, *, stream: bool) -> ir.ChatRequest:
    choice, parallel = _decode_tool_choice(req.tool_choice)
    system = _decode_system(req.system)
    return ir.ChatRequest(
        model=req.model,
        messages=_decode_messages(req.messages),
        system="\n".join(p.text for p in system) if isinstance(system, list) else system,
        tools=[_decode_tool(tool, f"tools[{i}]") for i, tool in enumerate(req.tools or [])],
        tool_choice=choice,
        parallel_tool_calls=parallel,
        response_format=_decode_output_format(req),
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        max_tokens=req.max_tokens,
        stop=req.stop_sequences or [],
        stream=stream,
        stream_include_usage=stream,  # Anthropic streams always carry usage
        user=req.metadata.user_id if req.metadata else None,
        cache=_breakpoint(req.cache_control),
        system_parts=system if isinstance(system, list) and _any_breakpoint(system) else [],
    )


# ---------------------------------------------------------------- validation wording

_EXPECTED = re.compile(r"Expected `([^`]+)`, got `([^`]+)`(?: - at `\$([^`]*)`)?$")
_MISSING = re.compile(r"Object missing required field `([^`]+)`(?: - at `\$([^`]*)`)?$")
_LABELS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
}


def _load(body: bytes) -> _Request:
    try:
        return _REQUEST.decode(body)
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Expected `object`") and " - at " not in str(exc):
            raise ir.invalid_request("request body must be a JSON object") from None
        raise _field_error(exc, "") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ir.invalid_request(f"request body is not valid JSON: {exc}") from None


def _convert(value: object, shape: type[_T], where: str) -> _T:
    """A raw JSON value (a content block) as its Struct; `where` names it in errors."""
    try:
        return msgspec.convert(value, shape)
    except msgspec.ValidationError as exc:
        raise _field_error(exc, where) from None


def _field_error(exc: msgspec.ValidationError, where: str) -> ir.GatewayError:
    """msgspec's message in Anthropic's words: `path: expected a string`, `path: field required`."""
    text = str(exc)
    if missing := _MISSING.match(text):
        field, at = missing.groups()
        path = _join(_join(where, at or ""), "." + field)
        return ir.invalid_request(f"{path}: field required", param=path)
    if expected := _EXPECTED.match(text):
        want, got, at = expected.groups()
        path = _join(where, at or "")
        if got == "null" and not path.endswith("]"):  # a required field sent as null
            return ir.invalid_request(f"{path}: field required", param=path)
        labels = [_LABELS.get(kind, kind) for kind in want.split(" | ") if kind != "null"]
        return ir.invalid_request(f"{path}: expected {' or '.join(labels)}", param=path)
    at_match = re.search(r" - at `\$([^`]*)`$", text)
    path = _join(where, at_match.group(1) if at_match else "")
    return ir.invalid_request(f"{path}: {text.split(' - at ')[0]}", param=path or None)


def _join(where: str, tail: str) -> str:
    """A field path: `messages[0]` + `.content` -> `messages[0].content`."""
    return (where + tail) if where else tail.removeprefix(".")


# ---------------------------------------------------------------- parts of the request


def _breakpoint(control: _CacheControl | None) -> ir.CacheBreakpoint | None:
    return None if control is None else ir.CacheBreakpoint(ttl=control.ttl)


def _any_breakpoint(parts: list[ir.TextPart]) -> bool:
    return any(part.cache is not None for part in parts)


def _decode_system(value: str | list[Any] | None) -> str | list[ir.TextPart] | None:
    if value is None or isinstance(value, str):
        return value
    parts = []
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise ir.invalid_request(f"system[{i}]: only text blocks are allowed")
        text = _convert(block, _Text, f"system[{i}]")
        parts.append(ir.TextPart(text=text.text, cache=_breakpoint(text.cache_control)))
    return parts


def _blocks(content: str | list[Block]) -> list[Block]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _decode_messages(raw: list[_Message]) -> list[ir.Message]:
    messages: list[ir.Message] = []
    tool_names: dict[str, str] = {}  # tool_use id -> name, to name the tool results
    for i, item in enumerate(raw):
        where, blocks = f"messages[{i}]", _blocks(item.content)
        if item.role == "assistant":
            messages.append(_decode_assistant(blocks, where, tool_names))
        elif item.role == "user":
            messages.extend(_decode_user_turn(blocks, where, tool_names))
        else:
            raise ir.invalid_request(f"{where}.role: expected 'user' or 'assistant'")
    return messages


def _decode_assistant(blocks: list[Block], where: str, tool_names: dict[str, str]) -> ir.Message:
    parts: list[ir.Part] = []
    calls: list[ir.ToolCall] = []
    cache = None  # a tool_use's breakpoint moves to the turn's end (the IR marks no call)
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "tool_use":
            call = _decode_tool_use(block, f"{where}.content[{j}]")
            tool_names[call.id] = call.name
            calls.append(call)
            cache = _block_breakpoint(block, f"{where}.content[{j}]") or cache
        elif kind not in ("thinking", "redacted_thinking"):  # the IR carries no reasoning
            parts.append(_decode_part(block, f"{where}.content[{j}]"))
    return ir.Message(role="assistant", content=parts, tool_calls=calls, cache=cache)


def _block_breakpoint(block: Block, where: str) -> ir.CacheBreakpoint | None:
    if "cache_control" not in block:  # most blocks: no second conversion
        return None
    return _breakpoint(_convert(block, _Cached, where).cache_control)


def _decode_user_turn(
    blocks: list[Block], where: str, tool_names: dict[str, str]
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


def _decode_tool_use(block: Block, where: str) -> ir.ToolCall:
    use = _convert(block, _ToolUse, where)
    arguments = use.input if use.input is not None else {}
    return ir.ToolCall(id=use.id, name=use.name, arguments=_encode_json(arguments).decode())


def _decode_tool_result(block: Block, where: str, tool_names: dict[str, str]) -> ir.Message:
    result = _convert(block, _ToolResult, where)
    parts = [] if result.content is None else _blocks(result.content)
    return ir.Message(
        role="tool",
        content=[_decode_part(p, f"{where}.content[{k}]") for k, p in enumerate(parts)],
        tool_call_id=result.tool_use_id,
        name=tool_names.get(result.tool_use_id),
        cache=_block_breakpoint(block, where),
    )


def _decode_part(block: Block, where: str) -> ir.Part:
    kind = block.get("type")
    if kind == "text":
        text = _convert(block, _Text, where)
        return ir.TextPart(text=text.text, cache=_breakpoint(text.cache_control))
    if kind == "image":
        image = _convert(block, _Image, where)
        source, cache, at = image.source, _breakpoint(image.cache_control), f"{where}.source"
        if source.get("type") == "base64":
            inline = _convert(source, _Base64Source, at)
            return ir.ImagePart(data=inline.data, media_type=inline.media_type, cache=cache)
        if source.get("type") == "url":
            return ir.ImagePart(url=_convert(source, _UrlSource, at).url, cache=cache)
    return ir.UnknownPart(source_format=SOURCE_FORMAT, raw=block)


def _decode_tool(tool: Block, where: str) -> ir.Tool:
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise ir.invalid_request(f"{where}: server tool type {kind!r} is not supported")
    decoded = _convert(tool, _Tool, where)
    return ir.Tool(
        name=decoded.name,
        description=decoded.description,
        parameters=decoded.input_schema,
        cache=_breakpoint(decoded.cache_control),
    )


def _decode_tool_choice(
    choice: _ToolChoice | None,
) -> tuple[ir.ToolChoice | None, bool | None]:
    if choice is None:
        return None, None
    mode = _TOOL_CHOICE_IN.get(choice.type) if isinstance(choice.type, str) else None
    if mode is None:
        raise ir.invalid_request("tool_choice.type: expected auto, any, tool or none")
    if mode == "tool" and not choice.name:
        raise ir.invalid_request("tool_choice.name: required with type 'tool'")
    parallel = False if choice.disable_parallel_tool_use else None
    return ir.ToolChoice(mode=mode, name=choice.name), parallel  # type: ignore[arg-type]


def _decode_output_format(req: _Request) -> ir.ResponseFormat | None:
    config = req.output_config.format if req.output_config else None
    raw = config or req.output_format  # an empty output_config.format counts as absent
    if raw is None:
        return None
    fmt = _convert(raw, _Format, "output_config.format")
    if fmt.type != "json_schema":
        raise ir.invalid_request("output_config.format.type: expected 'json_schema'")
    if fmt.schema is None:
        raise ir.invalid_request(
            "output_config.format.schema: field required", param="output_config.format.schema"
        )
    return ir.ResponseFormat(type="json_schema", schema=fmt.schema)
