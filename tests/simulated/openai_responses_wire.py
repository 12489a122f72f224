"""OpenAI's Responses API (`POST /v1/responses`) on the wire, as OpenAI serves it.

Shapes follow platform.openai.com/docs/api-reference/responses and the `openai`
SDK's `types/responses/` (Response, ResponseUsage, the typed stream events, each
with `event:` line and `sequence_number`). Text and function calls, streamed or
not; usage with `cached_tokens` and, when the request asks for `reasoning`, one
reasoning token. The simulator keeps no conversations: a `previous_response_id`
is echoed back, as a stateless stand-in for OpenAI's stored ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tests.simulated.framing import Call, Rendered, json_reply, sse_frame
from tests.simulated.openai_wire import CREATED, error
from tests.simulated.replies import Prompt, Reply, ToolSpec, as_reported, plan_reply, split_even
from tests.simulated.scenario import Usage

SSE = "text/event-stream; charset=utf-8"


def decode(body: dict[str, Any], model: str) -> Prompt:
    raw = body.get("input")
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])
    texts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    last_user, tool_result = "", None
    for item in items:
        text = _text_of(item)
        texts.append(text)
        if item.get("role") == "user":
            last_user = text
        tool_result = text if item.get("type") == "function_call_output" else None
    tools = tuple(
        ToolSpec(t["name"], t.get("parameters") or {})
        for t in body.get("tools") or []
        if t.get("type") == "function"
    )
    text_format = ((body.get("text") or {}).get("format") or {}).get("type")
    return Prompt(
        provider="openai",
        model=model,
        texts=tuple(t for t in texts if t),
        last_user_text=last_user,
        tools=tools,
        tool_result=tool_result,
        json_mode=text_format in ("json_object", "json_schema"),
        stream=body.get("stream") is True,
        options={"reasoning": body.get("reasoning") is not None},
    )


def _text_of(item: dict[str, Any]) -> str:
    content = item.get("content", item.get("output"))
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return " ".join(p.get("text", "") for p in parts if isinstance(p, dict))


def responses(call: Call) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    model = body.get("model")
    if not model:
        return error(400, "Missing required parameter: 'model'.")
    if body.get("input") is None:
        return error(400, "Missing required parameter: 'input'.")
    prompt = decode(body, model)
    reply = plan_reply(prompt, call.scenario)
    if prompt.options["reasoning"]:  # reasoning models spend tokens thinking
        reply = dataclasses.replace(
            reply,
            usage=dataclasses.replace(reply.usage, output_tokens=reply.usage.output_tokens + 1),
        )
    prompt = as_reported(prompt, call.scenario)
    response_id = f"resp_sim{call.seq:04d}"
    final = _response(body, prompt, reply, response_id, "completed")
    if prompt.stream:
        return Rendered(
            200, _stream_frames(body, prompt, reply, final), SSE, "sse_typed", usage=reply.usage
        )
    return json_reply(final, usage=reply.usage)


def _usage(usage: Usage, reasoning: bool) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 1 if reasoning else 0},
        "total_tokens": usage.total_tokens,
    }


def _message(response_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": f"msg_{response_id[5:]}",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content if status == "completed" else [],
    }


def _call_item(index: int, reply: Reply, arguments: str, status: str) -> dict[str, Any]:
    call = reply.tool_calls[index]
    return {
        "id": f"fc_{call.id}",
        "type": "function_call",
        "call_id": f"call_{call.id}",
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


def _output(reply: Reply, response_id: str) -> list[dict[str, Any]]:
    if reply.tool_calls:
        return [
            _call_item(i, reply, c.arguments_json, "completed")
            for i, c in enumerate(reply.tool_calls)
        ]
    return [_message(response_id, reply.text, "completed")]


def _response(
    body: dict[str, Any], prompt: Prompt, reply: Reply, response_id: str, status: str
) -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "completed_at": CREATED + 1 if done else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": prompt.model,
        "output": _output(reply, response_id) if done else [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": _usage(reply.usage, prompt.options["reasoning"]) if done else None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _stream_frames(
    body: dict[str, Any], prompt: Prompt, reply: Reply, final: dict[str, Any]
) -> list[bytes]:
    frames: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        event = {"type": kind, "sequence_number": len(frames), **fields}
        frames.append(sse_frame(event, kind))

    pending = _response(body, prompt, reply, final["id"], "in_progress")
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for index, call in enumerate(reply.tool_calls):
        item = _call_item(index, reply, "", "in_progress")
        emit("response.output_item.added", output_index=index, item=item)
        for piece in split_even(call.arguments_json, 3):
            emit(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=piece,
            )
        emit(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            name=call.name,
            arguments=call.arguments_json,
        )
        done = _call_item(index, reply, call.arguments_json, "completed")
        emit("response.output_item.done", output_index=index, item=done)
    if not reply.tool_calls:
        _text_frames(emit, reply, final["id"])
    emit("response.completed", response=final)
    return frames


def _text_frames(emit: Any, reply: Reply, response_id: str) -> None:
    item = _message(response_id, "", "in_progress")
    at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    emit("response.output_item.added", output_index=0, item=item)
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    emit("response.content_part.added", part=empty, **at)
    for piece in reply.pieces:
        emit("response.output_text.delta", delta=piece, logprobs=[], **at)
    emit("response.output_text.done", text=reply.text, logprobs=[], **at)
    part = {**empty, "text": reply.text}
    emit("response.content_part.done", part=part, **at)
    emit(
        "response.output_item.done",
        output_index=0,
        item=_message(response_id, reply.text, "completed"),
    )
