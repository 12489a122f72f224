"""Anthropic Messages codec, driven by the vectors in tests/vectors/anthropic_messages.

A new quirk is a new vector file:
  requests/         client wire -> IR, and IR -> upstream body (defaults to the wire body)
  bad_requests/     client wire -> invalid_request whose message contains `error`
  encode_requests/  IR (as other dialects produce it) -> upstream body
  encode_rejects/   IR -> invalid_request from encode_request
  responses/        upstream message -> IR, IR -> client message (defaults to the wire)
  errors/           upstream status + body -> ErrorInfo
  streams/          raw upstream SSE (*.sse) -> IR events (*.json), split at every byte
  stream_encode/    IR events (*.json) -> client SSE bytes (*.sse)
Checks against the official `anthropic` SDK live in test_anthropic_messages_sdk.py
(importing the SDK alone takes seconds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc import ir
from extproc.formats import anthropic_messages as codec

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "anthropic_messages"


def _cases(kind: str, pattern: str = "*.json") -> list[Any]:
    return [pytest.param(p, id=p.stem) for p in sorted((VECTORS / kind).glob(pattern))]


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _body(wire: Any) -> bytes:
    return wire.encode() if isinstance(wire, str) else json.dumps(wire).encode()


def _events(raw: list[Any]) -> list[ir.StreamEvent]:
    return msgspec.convert(raw, list[ir.StreamEvent])


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize("path", _cases("requests"))
def test_decode_request(path: Path) -> None:
    vector = _load(path)
    assert codec.decode_request(_body(vector["wire"])) == msgspec.convert(
        vector["ir"], ir.ChatRequest
    )


@pytest.mark.parametrize("path", _cases("requests"))
def test_request_round_trip(path: Path) -> None:
    vector = _load(path)
    req = codec.decode_request(_body(vector["wire"]))
    upstream = json.loads(codec.encode_request(req, model=vector["wire"]["model"]))
    assert upstream == vector.get("upstream", vector["wire"])


@pytest.mark.parametrize("path", _cases("bad_requests"))
def test_bad_request(path: Path) -> None:
    vector = _load(path)
    with pytest.raises(ir.GatewayError) as caught:
        codec.decode_request(_body(vector["wire"]))
    assert caught.value.info.kind == "invalid_request"
    assert vector["error"] in caught.value.info.message


@pytest.mark.parametrize("path", _cases("encode_requests"))
def test_encode_request(path: Path) -> None:
    vector = _load(path)
    req = msgspec.convert(vector["ir"], ir.ChatRequest)
    assert json.loads(codec.encode_request(req, model=vector["model"])) == vector["upstream"]


@pytest.mark.parametrize("path", _cases("encode_rejects"))
def test_encode_request_rejects(path: Path) -> None:
    vector = _load(path)
    with pytest.raises(ir.GatewayError) as caught:
        codec.encode_request(msgspec.convert(vector["ir"], ir.ChatRequest), model="m")
    assert caught.value.info.kind == "invalid_request"
    assert vector["error"] in caught.value.info.message


def test_upstream_path() -> None:
    assert codec.upstream_path(model="claude-x", stream=True) == "/v1/messages"


# ---------------------------------------------------------------- responses and errors


@pytest.mark.parametrize("path", _cases("responses"))
def test_decode_response(path: Path) -> None:
    vector = _load(path)
    assert codec.decode_response(_body(vector["wire"])) == msgspec.convert(
        vector["ir"], ir.ChatResponse
    )


@pytest.mark.parametrize("path", _cases("responses"))
def test_encode_response(path: Path) -> None:
    vector = _load(path)
    body = codec.encode_response(msgspec.convert(vector["ir"], ir.ChatResponse))
    assert json.loads(body) == vector.get("client", vector["wire"])


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"id": "x"}', b'{"content": [1]}'])
def test_decode_response_rejects_garbage(body: bytes) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        codec.decode_response(body)
    assert caught.value.info.kind == "bad_gateway"
    assert "<html>" not in caught.value.info.message


def test_encode_response_unparsable_arguments_become_empty_input() -> None:
    call = ir.ToolCall(id="t", name="f", arguments='{"cut')
    resp = ir.ChatResponse(id="m", model="m", tool_calls=[call], finish_reason="tool_calls")
    assert json.loads(codec.encode_response(resp))["content"][0]["input"] == {}


@pytest.mark.parametrize("path", _cases("errors"))
def test_decode_error(path: Path) -> None:
    vector = _load(path)
    info = codec.decode_error(vector["status"], vector["body"].encode())
    assert info == msgspec.convert(vector["ir"], ir.ErrorInfo)


# ---------------------------------------------------------------- provider stream


def _variants(raw: bytes) -> dict[str, bytes]:
    return {
        "lf": raw,
        "crlf": raw.replace(b"\n", b"\r\n"),
        "nospace": raw.replace(b"data: ", b"data:").replace(b"event: ", b"event:"),
    }


def _decode_stream(chunks: list[bytes]) -> list[ir.StreamEvent]:
    decoder = codec.StreamDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return events + decoder.finish()


@pytest.mark.parametrize("variant", ["lf", "crlf", "nospace"])
@pytest.mark.parametrize("path", _cases("streams", "*.sse"))
def test_stream_decoder(path: Path, variant: str) -> None:
    raw = _variants(path.read_bytes())[variant]
    expected = _events(_load(path.with_suffix(".json"))["events"])
    assert _decode_stream([raw]) == expected
    assert _decode_stream([raw[i : i + 1] for i in range(len(raw))]) == expected  # byte by byte


@pytest.mark.parametrize("variant", ["lf", "crlf"])
@pytest.mark.parametrize("path", _cases("streams", "*.sse"))
def test_stream_decoder_every_split(path: Path, variant: str) -> None:
    raw = _variants(path.read_bytes())[variant]
    expected = _events(_load(path.with_suffix(".json"))["events"])
    for cut in range(1, len(raw)):
        assert _decode_stream([raw[:cut], raw[cut:]]) == expected, f"split at {cut}"


def test_stream_decoder_ignores_input_after_message_stop() -> None:
    decoder = codec.StreamDecoder()
    raw = (VECTORS / "streams" / "text.sse").read_bytes()
    decoder.feed(raw)
    assert decoder.feed(raw) == [] and decoder.finish() == []


# ---------------------------------------------------------------- client stream


def _encode_stream(events: list[ir.StreamEvent], *, one_by_one: bool = False) -> bytes:
    encoder = codec.StreamEncoder()
    if one_by_one:
        body = b"".join(encoder.feed([event]) for event in events)
    else:
        body = encoder.feed(events)
    return body + encoder.finish() + encoder.finish()


@pytest.mark.parametrize("path", _cases("stream_encode"))
def test_stream_encoder(path: Path) -> None:
    events = _events(_load(path)["events"])
    expected = path.with_suffix(".sse").read_bytes()
    assert _encode_stream(events) == expected
    assert _encode_stream(events, one_by_one=True) == expected


# ---------------------------------------------------------------- untrusted input

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "x"])},
    optional={
        "text": _json,
        "source": _json,
        "id": _json,
        "name": _json,
        "input": _json,
        "tool_use_id": _json,
        "content": _json,
    },
)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": st.one_of(st.text(max_size=5), st.lists(_block, max_size=3), _json),
    }
)
_request = st.fixed_dictionaries(
    {
        "model": st.just("m") | _json,
        "max_tokens": st.just(5) | _json,
        "messages": st.lists(_message, max_size=3) | _json,
    },
    optional={
        "system": _json,
        "tools": _json,
        "tool_choice": _json,
        "metadata": _json,
        "stop_sequences": _json,
        "output_config": _json,
        "temperature": _json,
    },
)


@settings(max_examples=50, deadline=None, database=None)
@given(_request)
def test_decode_request_only_raises_invalid_request(wire: dict[str, Any]) -> None:
    try:
        req = codec.decode_request(json.dumps(wire).encode())
    except ir.GatewayError as exc:
        assert exc.info.kind == "invalid_request"
        return
    try:
        codec.encode_request(req, model="m")
    except ir.GatewayError as exc:
        assert exc.info.kind == "invalid_request"


@settings(max_examples=30, deadline=None, database=None)
@given(st.lists(_json, max_size=4))
def test_stream_decoder_survives_any_json_events(payloads: list[Any]) -> None:
    raw = b"".join(b"event: x\ndata: " + json.dumps(p).encode() + b"\n\n" for p in payloads)
    events = _decode_stream([raw])
    assert isinstance(events[-1], ir.StreamError)
