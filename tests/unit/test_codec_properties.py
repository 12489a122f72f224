"""Property tests over every codec: hostile bodies give a result or a clean 4xx/5xx error.

Arbitrary JSON, and real request/response vectors with random mutations, go into every
decoder. Each must return a value or raise `ir.GatewayError` — never another exception
(which the processor would turn into a 500 without a useful message).
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
    ollama_chat,
    openai_chat,
    smart_api,
)

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
