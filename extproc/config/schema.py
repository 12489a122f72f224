"""Every schema problem of a raw config tree in one pass, with suggestions.

msgspec stops at the first error, and `llmux check` must show them all: this walks the
YAML tree against the config Structs field by field and item by item, suggests the
closest field for an unknown one ("did you mean") and lists an enum's allowed values.
Pure: no I/O, no environment; the Structs themselves stay in settings.py.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import Any, Literal

import msgspec


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`; did you mean `x`?` for the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


def problems(value: Any, kind: Any, path: str = "$") -> list[str]:
    """Why `value` does not convert to `kind`, one `path: why` line each (empty: it does)."""
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct) and isinstance(value, dict):
        return _struct_problems(value, kind, path)
    args = typing.get_args(kind)
    if typing.get_origin(kind) is list and isinstance(value, list):
        return [p for i, item in enumerate(value) for p in problems(item, args[0], f"{path}[{i}]")]
    if typing.get_origin(kind) is dict and isinstance(value, dict):
        return [
            p for key, item in value.items() for p in problems(item, args[1], f"{path}[{key!r}]")
        ]
    if typing.get_origin(kind) is Literal and value not in args:
        allowed = ", ".join(repr(a) for a in args)
        hint = did_you_mean(value, [str(a) for a in args]) if isinstance(value, str) else ""
        return [f"{path}: {value!r} is not one of {allowed}{hint}"]
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        why, _, where = str(exc).partition(" - at `$")
        return [f"{path}{where.rstrip('`')}: {why}"]
    return []


def _struct_problems(value: dict[Any, Any], kind: type[msgspec.Struct], path: str) -> list[str]:
    fields = {f.encode_name: f for f in msgspec.structs.fields(kind)}
    found = [
        f"{path}.{key}: unknown field{did_you_mean(str(key), fields)}"
        for key in value
        if key not in fields
    ]
    for name, field in fields.items():
        if name in value:
            found.extend(problems(value[name], field.type, f"{path}.{name}"))
        elif field.required:
            found.append(f"{path}.{name}: required field missing")
    return found
