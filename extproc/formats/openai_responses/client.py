"""The OpenAI Responses API as a client dialect: a request into IR, an answer out of it.

Decodes `POST /v1/responses` bodies (`input` as a string or a list of items,
`instructions`, function tools, `tool_choice`, `text.format`, sampling and length
limits) into `extproc.ir` and encodes a complete answer as a Response object.
Conversation state (`previous_response_id`, `store`) is read here but kept by the
phases: a codec does no I/O. The stream lives in stream.py.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import msgspec

from extproc import ir
from extproc.formats.openai_chat.client import _decode_client
from extproc.formats.openai_chat.wire import _decode_image
from extproc.formats.openai_responses.wire import ENCODER, REQUEST, SOURCE, Request

# Built-in tools (web_search, file_search, ...) run on OpenAI's servers, and custom or
# shell tools have no function schema: no provider behind the IR can take them.
_TOOL_HINT = "only function tools can be translated for this model's provider"
_TOOL_MODES: dict[str, Literal["auto", "none", "required"]] = {
    "auto": "auto",
    "none": "none",
    "required": "required",
}
_EFFORTS: dict[str, ir.ReasoningEffort] = {
    e: e for e in ("none", "minimal", "low", "medium", "high", "xhigh", "max")
}
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class Conversation(NamedTuple):
    """What a request says about stored state (the phases keep it, the codec cannot)."""

    previous_response_id: str | None
    store: bool  # the API stores responses unless told not to
    metadata: dict[str, str]


def decode_request(
    body: bytes, *, path_model: str | None = None, path_stream: bool = False
) -> ir.ChatRequest:
    """A client's responses.create request as IR; bad input raises invalid_request."""
    wire = _decode(body)
    if not wire.model:
        raise ir.invalid_request("'model' is required", param="model")
    _reject_unsupported(wire)
    messages = _decode_input(wire.input, continued=wire.previous_response_id is not None)
    return ir.ChatRequest(
        model=wire.model,
        messages=messages,
        system=wire.instructions or None,
        tools=_decode_tools(wire.tools),
        tool_choice=_decode_tool_choice(wire.tool_choice),
        parallel_tool_calls=wire.parallel_tool_calls,
        response_format=_decode_format(wire),
        temperature=wire.temperature,
        top_p=wire.top_p,
        max_tokens=wire.max_output_tokens,
        stream=bool(wire.stream),
        stream_include_usage=bool(wire.stream),  # response.completed always has usage
        user=wire.user,
        reasoning_effort=_decode_effort(wire),
    )


def decode_conversation(body: bytes) -> Conversation:
    """The request's conversation fields (its body was validated by decode_request)."""
    wire = _decode(body)
    return Conversation(wire.previous_response_id, wire.store is not False, wire.metadata or {})


def _decode(body: bytes) -> Request:
    wire: Request = _decode_client(body, REQUEST)  # OpenAI's messages for a bad body
    return wire


def _reject_unsupported(wire: Request) -> None:
    if wire.background:
        raise ir.invalid_request("background responses are not supported", param="background")
    if wire.conversation is not None:
        raise ir.invalid_request(
            "'conversation' is not supported; use previous_response_id", param="conversation"
        )
    if wire.prompt is not None:
        raise ir.invalid_request("stored prompts are not supported", param="prompt")
    if wire.metadata is not None and len(wire.metadata) > 16:
        raise ir.invalid_request("metadata takes at most 16 pairs", param="metadata")


# ---------------------------------------------------------------- input items


def _decode_input(items: str | list[Any] | None, *, continued: bool) -> list[ir.Message]:
    if isinstance(items, str):
        return [ir.Message(role="user", content=[ir.TextPart(items)])]
    if not items and not continued:
        raise ir.invalid_request("'input' must be a string or a non-empty array", param="input")
    messages: list[ir.Message] = []
    tool_names: dict[str, str] = {}  # call_id -> function name, for the outputs
    for i, item in enumerate(items or ()):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ir.invalid_request("Input items must be objects", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            _append(messages, _decode_message(item, where))
        elif kind == "function_call":
            call = _decode_call(item, where)
            tool_names[call.id] = call.name
            _append(messages, ir.Message(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            messages.append(_decode_output(item, where, tool_names, continued=continued))
        else:
            raise ir.invalid_request(
                f"Input items of type {kind!r} are not supported", param=f"{where}.type"
            )
    return messages


def _append(messages: list[ir.Message], message: ir.Message) -> None:
    """Consecutive assistant items (text, then its calls) are one assistant turn."""
    last = messages[-1] if messages else None
    if message.role == "assistant" and last is not None and last.role == "assistant":
        messages[-1] = ir.Message(
            role="assistant",
            content=[*last.content, *message.content],
            tool_calls=[*last.tool_calls, *message.tool_calls],
        )
    else:
        messages.append(message)


def _decode_message(item: dict[str, Any], where: str) -> ir.Message:
    role = item.get("role")
    parts = _decode_parts(item.get("content"), where)
    if role in ("user", "assistant"):
        return ir.Message(role=role, content=parts)
    if role in ("system", "developer"):
        # Mid-conversation system text has no place in every provider: it is refused
        # rather than moved. `instructions` is the Responses API's system prompt.
        raise ir.invalid_request(
            f"{role} messages are not supported in 'input'; use 'instructions'",
            param=f"{where}.role",
        )
    raise ir.invalid_request(f"Unsupported message role {role!r}", param=f"{where}.role")


def _decode_parts(content: Any, where: str) -> list[ir.Part]:
    if isinstance(content, str):
        return [ir.TextPart(content)] if content else []
    if not isinstance(content, list):
        raise ir.invalid_request("'content' must be a string or an array", param=where)
    return [_decode_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]


def _decode_part(part: Any, where: str) -> ir.Part:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise ir.invalid_request(f"Content part of type {kind!r} needs 'text'", param=where)
        return ir.TextPart(text)
    if kind == "refusal":
        return ir.TextPart(str(part.get("refusal", "")))
    if kind == "input_image":
        if part.get("file_id"):
            raise ir.invalid_request("Images by file_id are not supported", param=where)
        return _decode_image(part.get("image_url"), where)
    if isinstance(part, dict):
        return ir.UnknownPart(source_format=SOURCE, raw=part)
    raise ir.invalid_request("Content parts must be objects", param=where)


def _decode_call(item: dict[str, Any], where: str) -> ir.ToolCall:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
    if not isinstance(call_id, str) or not call_id:
        raise ir.invalid_request("function_call items need a 'call_id'", param=where)
    if not isinstance(name, str) or not name or not isinstance(arguments, str):
        raise ir.invalid_request("function_call items need 'name' and 'arguments'", param=where)
    return ir.ToolCall(id=call_id, name=name, arguments=arguments)


def _decode_output(
    item: dict[str, Any], where: str, tool_names: dict[str, str], *, continued: bool
) -> ir.Message:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise ir.invalid_request("function_call_output items need a 'call_id'", param=where)
    name = tool_names.get(call_id)
    if name is None and not continued:  # a continued turn finds its call in the history
        raise ir.invalid_request(
            f"function_call_output answers call_id {call_id!r}, which no function_call "
            "item before it contains",
            param=f"{where}.call_id",
        )
    content = _decode_parts(item.get("output", ""), f"{where}.output")
    return ir.Message(role="tool", content=content, tool_call_id=call_id, name=name)


# ---------------------------------------------------------------- options


def _decode_tools(tools: list[dict[str, Any]] | None) -> list[ir.Tool]:
    out = []
    for i, tool in enumerate(tools or ()):
        kind = tool.get("type")
        if kind != "function":
            raise ir.invalid_request(
                f"Tools of type {kind!r} cannot be run here: {_TOOL_HINT}",
                param=f"tools[{i}].type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise ir.invalid_request("Function tools need a 'name'", param=f"tools[{i}].name")
        description, parameters = tool.get("description"), tool.get("parameters") or {}
        if not isinstance(parameters, dict) or not isinstance(description, str | None):
            raise ir.invalid_request(
                "A function tool's 'parameters' must be an object and 'description' a string",
                param=f"tools[{i}]",
            )
        out.append(ir.Tool(name=name, description=description, parameters=parameters))
    return out


def _decode_tool_choice(choice: str | dict[str, Any] | None) -> ir.ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return ir.ToolChoice(mode=_TOOL_MODES[choice])
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str) and name:
            return ir.ToolChoice(mode="tool", name=name)
    raise ir.invalid_request(
        'tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}',
        param="tool_choice",
    )


def _decode_effort(wire: Request) -> ir.ReasoningEffort | msgspec.UnsetType:
    effort = wire.reasoning.effort if wire.reasoning is not None else None
    if effort is None:
        return msgspec.UNSET
    if effort not in _EFFORTS:
        raise ir.invalid_request(
            f"reasoning.effort must be one of {', '.join(_EFFORTS)}", param="reasoning.effort"
        )
    return _EFFORTS[effort]


def _decode_format(wire: Request) -> ir.ResponseFormat | None:
    fmt = wire.text.format if wire.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ir.ResponseFormat(type="json_object")
    if fmt.type == "json_schema":
        if fmt.schema is None:
            raise ir.invalid_request(
                "text.format of type json_schema needs 'schema'", param="text.format.schema"
            )
        return ir.ResponseFormat(
            type="json_schema", schema=fmt.schema, name=fmt.name, strict=fmt.strict
        )
    raise ir.invalid_request(f"Unsupported text.format type {fmt.type!r}", param="text.format")


# ---------------------------------------------------------------- the answer


def response_id(ir_id: str) -> str:
    """The Response's id: the gateway mints `resp_` ids; any other id is prefixed."""
    return ir_id if ir_id.startswith("resp_") else f"resp_{ir_id}"


def encode_response(resp: ir.ChatResponse) -> bytes:
    """A Response object for a non-streaming client."""
    return ENCODER.encode(response_object(resp))


def response_object(
    resp: ir.ChatResponse, *, status: str | None = None, output: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The Response object; the stream sends it in its lifecycle events too."""
    ident = response_id(resp.id)
    reason = _INCOMPLETE.get(resp.finish_reason)
    done = status or ("incomplete" if reason else "completed")
    return {
        "id": ident,
        "object": "response",
        "created_at": resp.created,
        "status": done,
        "error": None,
        "incomplete_details": {"reason": reason} if reason and done == "incomplete" else None,
        "instructions": None,
        "model": resp.model,
        "output": output_items(resp) if output is None else output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "metadata": {},
        "usage": encode_usage(resp.usage) if resp.usage is not None else None,
    }


def output_items(resp: ir.ChatResponse) -> list[dict[str, Any]]:
    ident = response_id(resp.id)
    status = "incomplete" if resp.finish_reason in _INCOMPLETE else "completed"
    items = []
    text = "".join(p.text for p in resp.content if isinstance(p, ir.TextPart))
    if text or not resp.tool_calls:
        items.append(message_item(message_item_id(ident), text, status))
    items.extend(call_item(call, status) for call in resp.tool_calls)
    return items


def message_item_id(response: str) -> str:
    return "msg_" + response.removeprefix("resp_")


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(call: ir.ToolCall, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{call.id}",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def encode_usage(usage: ir.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }
