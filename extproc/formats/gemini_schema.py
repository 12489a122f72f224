"""JSON schema <-> the OpenAPI `Schema` subset Gemini accepts (tools, response schemas).

Client side: a Gemini `Schema` (types maybe upper case, snake_case keys) as plain JSON
schema. Provider side: any JSON schema reduced to what Gemini accepts
(https://ai.google.dev/api/caching#Schema).
"""

from __future__ import annotations

from typing import Any

from extproc import ir
from extproc.formats.gemini_json import Json, as_list, as_object, dumps

# ---------------------------------------------------------------- schemas, client side

_SNAKE_SCHEMA_KEYS = {
    "any_of": "anyOf",
    "max_items": "maxItems",
    "min_items": "minItems",
    "max_length": "maxLength",
    "min_length": "minLength",
    "max_properties": "maxProperties",
    "min_properties": "minProperties",
    "property_ordering": "propertyOrdering",
}
_GEMINI_ONLY_KEYS = frozenset({"propertyOrdering", "example", "nullable"})


def schema_from_gemini(schema: object, where: str = "schema") -> Json:
    """A Gemini `Schema` (OpenAPI subset, types maybe upper case) as plain JSON schema."""
    if not isinstance(schema, dict):
        raise ir.invalid_request(f"{where} must be an object", param=where)
    out: Json = {}
    for raw_key, value in schema.items():
        key = _SNAKE_SCHEMA_KEYS.get(raw_key) or str(raw_key)
        if key == "type":
            if isinstance(value, str) and value.upper() != "TYPE_UNSPECIFIED":
                out["type"] = value.lower()
        elif key == "properties":
            props = as_object(value, f"{where}.properties")
            out[key] = {
                n: schema_from_gemini(s, f"{where}.properties.{n}") for n, s in props.items()
            }
        elif key == "items":
            out[key] = schema_from_gemini(value, f"{where}.items")
        elif key == "anyOf":
            out[key] = [schema_from_gemini(s, f"{where}.anyOf") for s in as_list(value, where)]
        elif key == "format" and value == "enum":
            continue  # Gemini's marker for enums, not a JSON-schema format
        elif key not in _GEMINI_ONLY_KEYS:
            out[key] = value
    if schema.get("nullable") is True:
        _make_nullable(out)
    return out


def _make_nullable(out: Json) -> None:
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    elif "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]


# ---------------------------------------------------------------- schemas, provider side

_GEMINI_SCHEMA_KEEP = frozenset(
    {
        "format", "title", "description", "nullable", "maxItems", "minItems",
        "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
        "example", "default", "minimum", "maximum", "propertyOrdering",
    }
)  # fmt: skip
_MAX_SCHEMA_DEPTH = 48


def schema_to_gemini(schema: Json, *, ordered: bool = False) -> Json:
    """JSON schema reduced to the `Schema` subset Gemini accepts (https://ai.google.dev/api/caching#Schema).

    $ref into $defs/definitions is inlined (recursive schemas are rejected), oneOf
    becomes anyOf, type lists and null members become `nullable`, enum values become
    strings, and keys Gemini rejects (additionalProperties, $schema, ...) are dropped.
    `ordered` adds propertyOrdering, which Gemini 2.0 needs for stable JSON output.
    """
    defs = {
        **as_object(schema.get("definitions"), "definitions"),
        **as_object(schema.get("$defs"), "$defs"),
    }
    return _SchemaReducer(defs, ordered).reduce(schema, 0)


class _SchemaReducer:
    __slots__ = ("_defs", "_ordered")

    def __init__(self, defs: Json, ordered: bool) -> None:
        self._defs = defs
        self._ordered = ordered

    def reduce(self, schema: object, depth: int) -> Json:
        if depth > _MAX_SCHEMA_DEPTH:
            raise ir.invalid_request(
                "tool or response schema is recursive or too deep for the gemini provider"
            )
        if schema is True or schema == {}:
            return {}
        if not isinstance(schema, dict):
            raise ir.invalid_request("JSON schema nodes must be objects")
        ref = schema.get("$ref")
        if isinstance(ref, str):
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.reduce({**self._resolve(ref), **rest}, depth + 1)
        out: Json = {}
        for key, value in schema.items():
            self._key(out, key, value, depth)
        self._tidy(out)
        return out

    def _resolve(self, ref: str) -> Json:
        name = ref.rsplit("/", 1)[-1]
        target = self._defs.get(name)
        if not ref.startswith(("#/$defs/", "#/definitions/")) or not isinstance(target, dict):
            raise ir.invalid_request(f"schema $ref {ref!r} cannot be resolved")
        return target

    def _key(self, out: Json, key: str, value: Any, depth: int) -> None:
        if key == "type":
            _gemini_type(out, value)
        elif key == "properties":
            props = as_object(value, "properties")
            out[key] = {n: self.reduce(s, depth + 1) for n, s in props.items()}
        elif key == "items":
            out[key] = self.reduce(value, depth + 1)
        elif key in ("anyOf", "oneOf"):
            self._any_of(out, as_list(value, key), depth)
        elif key == "allOf":
            for sub in as_list(value, key):
                _merge_schema(out, self.reduce(sub, depth + 1))
        elif key in ("enum", "const"):
            values = as_list(value, key) if key == "enum" else [value]
            if None in values:
                out["nullable"] = True
            out["enum"] = [v if isinstance(v, str) else dumps(v) for v in values if v is not None]
        elif key == "required":
            out[key] = [n for n in as_list(value, key) if isinstance(n, str)]
        elif key == "examples" and isinstance(value, list) and value:
            out.setdefault("example", value[0])
        elif key in _GEMINI_SCHEMA_KEEP and value is not None:
            out[key] = value

    def _any_of(self, out: Json, members: list[Any], depth: int) -> None:
        kept = []
        for member in members:
            if isinstance(member, dict) and member.get("type") == "null":
                out["nullable"] = True
            else:
                kept.append(self.reduce(member, depth + 1))
        if len(kept) == 1:
            _merge_schema(out, kept[0])
        elif kept:
            out["anyOf"] = kept

    def _tidy(self, out: Json) -> None:
        props = out.get("properties")
        if props == {}:
            del out["properties"]  # Gemini: "properties: should be non-empty for OBJECT type"
        if "required" in out:
            out["required"] = [n for n in out["required"] if n in (props or {})]
            if not out["required"]:
                del out["required"]
        if "enum" in out and "type" not in out and "anyOf" not in out:
            out["type"] = "STRING"  # Gemini enums are string enums
        if self._ordered and props and len(props) > 1:
            out.setdefault("propertyOrdering", list(props))


def _gemini_type(out: Json, value: object) -> None:
    kinds = [value] if isinstance(value, str) else as_list(value, "type")
    real = [k.upper() for k in kinds if isinstance(k, str) and k != "null"]
    if len(real) < len(kinds):
        out["nullable"] = True
    if len(real) == 1:
        out["type"] = real[0]
    elif real:
        out["anyOf"] = [{"type": k} for k in real]


def _merge_schema(out: Json, extra: Json) -> None:
    for key, value in extra.items():
        if key == "properties" and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        elif key == "required" and isinstance(out.get(key), list):
            out[key] = [*out[key], *(n for n in value if n not in out[key])]
        else:
            out.setdefault(key, value)
