"""Property tests over every codec: hostile bodies give a result or a clean 4xx/5xx error.

Arbitrary JSON, and real request/response vectors with random mutations, go into every
decoder. Each must return a value or raise `ir.GatewayError` — never another exception
(which the processor would turn into a 500 without a useful message). Client bodies also
go through the router phase's own entry (`client.*`: the nesting guard, then the codec),
with deep nesting in the free-form fields a typed decoder cannot bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc import ir
from extproc.formats import (
    anthropic_messages,
    gemini_generate,
    json_nesting,
    ollama_chat,
    openai_chat,
    smart_api,
)
from extproc.formats.endpoints import classify
from extproc.phases.translation import decode_client_body

VECTORS = Path(__file__).parent.parent / "vectors"
CODECS = {
    "openai": openai_chat,
    "anthropic": anthropic_messages,
    "gemini": gemini_generate,
    "ollama": ollama_chat,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=40,
)


def clean_or_gateway_error(decode: Callable[[bytes], Any], body: bytes) -> None:
    try:
        decode(body)
    except ir.GatewayError as exc:
        assert 400 <= exc.info.http_status < 600
        assert exc.info.message


def request_decoder(codec: Any) -> Callable[[bytes], Any]:
    return lambda body: codec.decode_request(body, path_model="m")


def response_decoder(codec: Any) -> Callable[[bytes], Any]:
    return lambda body: codec.decode_response(body)


def error_decoder(codec: Any) -> Callable[[bytes], Any]:
    return lambda body: codec.decode_error(500, body)


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "ollama.decode_generate_request": ollama_chat.decode_generate_request,
    "smart.decode_request": lambda b: smart_api.decode_request(b, default_model="m"),
}
for _name, _codec in CODECS.items():
    DECODERS[f"{_name}.decode_request"] = request_decoder(_codec)
    DECODERS[f"{_name}.decode_response"] = response_decoder(_codec)
    DECODERS[f"{_name}.decode_error"] = error_decoder(_codec)


def stream_decode(codec: Any) -> Callable[[bytes], Any]:
    def run(body: bytes) -> list[Any]:
        decoder = codec.StreamDecoder()
        events = decoder.feed(body)
        return [*events, *decoder.finish()]

    return run


DECODERS.update({f"{n}.StreamDecoder": stream_decode(c) for n, c in CODECS.items()})

CLIENT_PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/m:generateContent",
    "ollama": "/api/chat",
    "smart": "/api/smart",
    "responses": "/v1/responses",
}


def client_decoder(path: str) -> Callable[[bytes], Any]:
    endpoint = classify("POST", path)
    assert endpoint is not None
    return lambda body: decode_client_body(endpoint, body, default_model="m")


DECODERS.update({f"client.{d}": client_decoder(p) for d, p in CLIENT_PATHS.items()})
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(DECODERS))
@SETTINGS
@given(value=json_values)
def test_arbitrary_json_never_escapes_as_a_foreign_exception(name: str, value: Any) -> None:
    clean_or_gateway_error(DECODERS[name], json.dumps(value).encode())


@pytest.mark.parametrize("name", sorted(DECODERS))
@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_a_foreign_exception(name: str, data: bytes) -> None:
    clean_or_gateway_error(DECODERS[name], data)


def vector_bodies() -> list[bytes]:
    bodies = []
    for path in sorted(VECTORS.rglob("*.json"))[:400]:
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        candidates = [data] if not isinstance(data, dict) else [data, *data.values()]
        bodies.extend(json.dumps(c).encode() for c in candidates if isinstance(c, dict))
    return bodies


BODIES = vector_bodies()


@pytest.mark.parametrize("name", sorted(DECODERS))
@SETTINGS
@given(index=st.integers(min_value=0), cut=st.integers(min_value=0), flip=st.integers(0, 255))
def test_mutated_real_bodies_give_a_result_or_a_clean_error(
    name: str, index: int, cut: int, flip: int
) -> None:
    body = bytearray(BODIES[index % len(BODIES)])
    if body:
        position = cut % len(body)
        body[position] = flip  # one byte changed: broken JSON, or JSON of another shape
    clean_or_gateway_error(DECODERS[name], bytes(body))


HI = [{"role": "user", "content": "hi"}]
OPENAI_TOOL = {"type": "function", "function": {"name": "f", "parameters": "DEEP"}}
# Per client dialect, bodies with "DEEP" where free-form JSON is allowed.
FREE_FORM: dict[str, list[Any]] = {
    "openai": [
        {"model": "m", "messages": HI, "tools": [OPENAI_TOOL]},
        {"model": "m", "messages": HI, "unknown_field": "DEEP"},
        {
            "model": "m",
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": "DEEP"},
            },
        },
    ],
    "anthropic": [
        {
            "model": "m",
            "max_tokens": 5,
            "messages": HI,
            "tools": [{"name": "f", "input_schema": "DEEP"}],
        },
        {"model": "m", "max_tokens": 5, "messages": HI, "metadata": "DEEP", "unknown": "DEEP"},
    ],
    "gemini": [
        {
            "contents": [{"parts": [{"text": "hi"}]}],
            "tools": [{"functionDeclarations": [{"name": "f", "parameters": "DEEP"}]}],
        },
        {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"responseSchema": "DEEP"}},
        {"contents": [{"parts": [{"text": "hi"}]}], "unknownField": "DEEP"},
    ],
    "ollama": [
        {"model": "m", "messages": HI, "tools": [OPENAI_TOOL]},
        {"model": "m", "messages": HI, "format": "DEEP", "unknown": "DEEP"},
    ],
    "smart": [{"prompt": "hi", "unknown": "DEEP"}],
    "responses": [
        {
            "model": "m",
            "input": "hi",
            "tools": [{"type": "function", "name": "f", "parameters": "DEEP"}],
        },
        {"model": "m", "input": [{"role": "user", "content": [{"type": "x", "y": "DEEP"}]}]},
        {
            "model": "m",
            "input": "hi",
            "text": {"format": {"type": "json_schema", "schema": "DEEP"}},
        },
    ],
}


def nested(depth: int, pattern: bytes) -> str:
    """JSON nesting `depth` levels deep, arrays and objects mixed by `pattern`'s bits."""
    arrays = [pattern[i % len(pattern)] >> (i % 8) & 1 == 1 for i in range(depth)]
    opening = "".join("[" if a else '{"k":' for a in arrays)
    return opening + "1" + "".join("]" if a else "}" for a in reversed(arrays))


def deep_bodies(depth: int = 3000) -> list[bytes]:
    """Every free-form template nested `depth` deep (also seeds for bench/fuzz_codecs)."""
    deep = nested(depth, b"\x5a")
    return [json.dumps(t).replace('"DEEP"', deep).encode() for ts in FREE_FORM.values() for t in ts]


@SETTINGS
@given(
    dialect=st.sampled_from(sorted(FREE_FORM)),
    which=st.integers(min_value=0),
    depth=st.integers(min_value=1, max_value=5000),
    pattern=st.binary(min_size=1, max_size=8),
)
def test_deep_nesting_in_free_form_fields_is_a_clean_400(
    dialect: str, which: int, depth: int, pattern: bytes
) -> None:
    templates = FREE_FORM[dialect]
    template = json.dumps(templates[which % len(templates)])
    body = template.replace('"DEEP"', nested(depth, pattern)).encode()
    decode = DECODERS[f"client.{dialect}"]
    if json_nesting.depth(body) <= json_nesting.MAX_DEPTH:
        clean_or_gateway_error(decode, body)
        return
    with pytest.raises(ir.GatewayError) as caught:
        decode(body)
    assert caught.value.info.http_status == 400
    assert "nests deeper than" in caught.value.info.message


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert json_nesting.depth(b'{"a": "[[[{{{", "b": ["\\"[", {}]}') == 3
    assert json_nesting.depth(b"") == 0
    assert all(json_nesting.depth(body) > json_nesting.MAX_DEPTH for body in deep_bodies())
