"""The simple prompt API codec (/api/smart, client side only)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc import ir
from extproc.formats import endpoints as client_apis
from extproc.formats import smart_api as sa


def _decode(body: Any, default_model: str | None = None) -> ir.ChatRequest:
    return sa.decode_request(json.dumps(body).encode(), default_model=default_model)


def _sse(raw: bytes) -> list[Any]:
    """The data of each SSE event; `[DONE]` as the string."""
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), raw
    return [e[6:].decode() if e == b"data: [DONE]" else json.loads(e[6:]) for e in events]


def test_endpoint_is_classified_as_the_smart_dialect() -> None:
    endpoint = client_apis.classify("POST", "/api/smart")
    assert endpoint == client_apis.Endpoint("smart", "chat")
    assert endpoint.codec is sa.CLIENT


def test_decode_full_request() -> None:
    req = _decode({"prompt": "Hi", "model": "m", "system": "Be brief", "stream": True})
    assert req == ir.ChatRequest(
        model="m",
        messages=[ir.Message("user", [ir.TextPart("Hi")])],
        system="Be brief",
        stream=True,
    )


def test_decode_defaults_to_not_streaming_and_no_system() -> None:
    req = _decode({"prompt": "Hi", "model": "m"})
    assert req.stream is False and req.system is None


def test_decode_without_model_uses_the_default_model() -> None:
    assert _decode({"prompt": "Hi"}, default_model="default").model == "default"
    assert _decode({"prompt": "Hi", "model": "m"}, default_model="default").model == "m"


def test_decode_without_model_and_no_default_is_a_clear_400() -> None:
    with pytest.raises(ir.GatewayError) as caught:
        _decode({"prompt": "Hi"})
    info = caught.value.info
    assert info.http_status == 400
    assert "no model named `default`" in info.message


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m"}',
        b'{"model": "m", "prompt": ""}',
        b'{"model": "m", "prompt": null}',
        b'{"model": "m", "prompt": 3}',
        b"{not json",
        b"[]",
    ],
)
def test_decode_rejects_bad_bodies(body: bytes) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        sa.decode_request(body, default_model="default")
    assert caught.value.info.kind == "invalid_request"


def test_missing_prompt_names_the_prompt() -> None:
    with pytest.raises(ir.GatewayError) as caught:
        _decode({"model": "m"})
    assert "prompt" in caught.value.info.message


def test_encode_response() -> None:
    resp = ir.ChatResponse(
        id="r1",
        model="gpt-x",
        content=[ir.TextPart("Hello "), ir.TextPart("there")],
        usage=ir.Usage(input_tokens=7, output_tokens=3, cached_tokens=2),
    )
    body = json.loads(sa.encode_response(resp, provider="openai", cached=True))
    assert body == {
        "text": "Hello there",
        "model": "gpt-x",
        "provider": "openai",
        "usage": {"input_tokens": 7, "output_tokens": 3},
        "cached": True,
    }


def test_encode_response_without_usage_reports_zero() -> None:
    body = json.loads(
        sa.encode_response(ir.ChatResponse(id="r", model="m"), provider="p", cached=False)
    )
    assert body["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert body["text"] == "" and body["cached"] is False


def test_encode_error() -> None:
    info = ir.ErrorInfo(kind="invalid_request", message="`prompt` is required")
    assert json.loads(sa.encode_error(info)) == {
        "error": {"message": "`prompt` is required", "type": "invalid_request"}
    }


STREAM = [
    ir.StreamStart("r1", "gpt-x", 0),
    ir.TextDelta("Hel"),
    ir.TextDelta(""),
    ir.ToolCallStart(0, "c1", "f"),
    ir.ToolCallDelta(0, "{}"),
    ir.TextDelta("lo"),
    ir.StreamFinish("stop"),
    ir.StreamUsage(ir.Usage(input_tokens=1, output_tokens=2)),
]


def test_stream_sends_text_deltas_then_done() -> None:
    encoder = sa.StreamEncoder(include_usage=True)
    raw = encoder.feed(STREAM[:3]) + encoder.feed(STREAM[3:]) + encoder.finish()
    assert _sse(raw) == [{"text": "Hel"}, {"text": "lo"}, "[DONE]"]
    assert raw.endswith(b"data: [DONE]\n\n")
    assert encoder.finish() == b""


def test_stream_error_ends_the_stream() -> None:
    encoder = sa.StreamEncoder()
    error = ir.StreamError(ir.ErrorInfo(kind="bad_gateway", message="cut"))
    raw = encoder.feed([ir.TextDelta("a"), error, ir.TextDelta("b")]) + encoder.finish()
    assert _sse(raw) == [{"text": "a"}, {"error": {"message": "cut"}}, "[DONE]"]


def test_stream_cut_before_finish_reports_an_error() -> None:
    encoder = sa.StreamEncoder()
    raw = encoder.feed([ir.TextDelta("a")]) + encoder.finish()
    events = _sse(raw)
    assert events[0] == {"text": "a"} and "error" in events[1] and events[2] == "[DONE]"


def test_stream_content_type() -> None:
    assert sa.STREAM_CONTENT_TYPE == "text/event-stream"
