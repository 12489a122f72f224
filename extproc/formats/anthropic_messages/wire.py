"""Anthropic Messages: what its client side and provider side share.

Wire shapes (msgspec Structs), name tables and small helpers used by both
sides. Translates no whole message and does no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir

STREAM_CONTENT_TYPE = "text/event-stream"
SOURCE_FORMAT = "anthropic"

_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode
_TOOL_CHOICE_IN: dict[str, str] = {
    "auto": "auto",
    "any": "required",
    "tool": "tool",
    "none": "none",
}


def _tool_use_block(call: ir.ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}
