"""Reading Gemini request JSON: each helper checks a value's type and names the field.

Shared by the generateContent codec and its schema translation; raises the gateway's
invalid_request (a 400 in the client's format) on a value of the wrong type.
The other codecs read fixed shapes with msgspec Structs; Gemini's REST API takes
each field under its camelCase or its snake_case name, which a Struct (one name
per field) cannot express, so Gemini bodies are read as dicts through these checks.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir

DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()

Json = dict[str, Any]


def loads_object(body: bytes, what: str) -> Json:
    try:
        data = DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ir.invalid_request(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ir.invalid_request(f"{what} must be a JSON object")
    return data


def dumps(value: object) -> str:
    return _ENCODER.encode(value).decode()


def field(data: Json, camel: str, snake: str) -> Any:
    """A field by its camelCase name or, as the REST API also accepts, snake_case."""
    value = data.get(camel)
    return data.get(snake) if value is None else value


def as_object(value: object, where: str) -> Json:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ir.invalid_request(f"{where} must be an object", param=where)
    return value


def as_list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ir.invalid_request(f"{where} must be an array", param=where)
    return value


def as_str(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ir.invalid_request(f"{where} must be a non-empty string", param=where)
    return value


def as_number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ir.invalid_request(f"{where} must be a number", param=where)
    return float(value)


def as_integer(value: object, where: str) -> int | None:
    number = as_number(value, where)
    if number is None:
        return None
    if number != int(number):
        raise ir.invalid_request(f"{where} must be an integer", param=where)
    return int(number)
