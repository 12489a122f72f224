"""OpenAI Chat Completions: what its client side and provider side share.

Wire shapes (msgspec Structs), name tables and small helpers used by both
sides. Translates no whole message and does no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir

SOURCE = "openai_chat"
STREAM_CONTENT_TYPE = "text/event-stream"
_CUT_MESSAGE = "upstream stream ended before completion"


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


_ENCODER = msgspec.json.Encoder()


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


def _encode_tool_call(call: ir.ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
