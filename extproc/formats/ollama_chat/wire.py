"""Ollama native API: what its client side and provider side share.

Wire shapes (msgspec Structs), name tables and small helpers used by both
sides. Translates no whole message and does no I/O.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from extproc import ir

STREAM_CONTENT_TYPE = "application/x-ndjson"
SOURCE_FORMAT = "ollama"


class _Function(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | str = {}


class _ToolCall(msgspec.Struct):
    function: _Function
    id: str | None = None


_any = msgspec.json.Decoder()
_encode = msgspec.json.encode
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(?:;[^,]*)?;base64,(.*)", re.DOTALL)


def _text(parts: list[ir.Part]) -> str:
    return "".join(part.text for part in parts if isinstance(part, ir.TextPart))


def _arguments_text(arguments: dict[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else _encode(arguments).decode()


def _arguments_object(arguments: str) -> dict[str, Any] | None:
    """A tool call's JSON arguments text as the object Ollama wants; None if not one."""
    if not arguments.strip():
        return {}
    try:
        value = _any.decode(arguments)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _wire_calls(calls: list[ir.ToolCall], first_index: int = 0) -> list[dict[str, Any]]:
    """IR tool calls as Ollama ones; raises ValueError if arguments are not an object."""
    wire = []
    for index, call in enumerate(calls, first_index):
        args = _arguments_object(call.arguments)
        if args is None:
            raise ValueError(f"tool call {call.name!r} has arguments that are not a JSON object")
        fn = {"index": index, "name": call.name, "arguments": args}
        wire.append({"id": call.id, "function": fn})
    return wire
