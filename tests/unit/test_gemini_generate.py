"""Vector-driven tests of the Gemini generateContent codec (extproc.formats.gemini_generate).

Every case lives in tests/vectors/gemini_generate/<kind>/; a new quirk is a new file.
Checks against the official google-genai SDK live in test_gemini_generate_sdk.py
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
from extproc.formats import gemini_generate as gemini
from extproc.formats.gemini_generate.wire import _args_object
from extproc.formats.gemini_schema import schema_from_gemini, schema_to_gemini

VECTORS = Path(__file__).parent.parent / "vectors" / "gemini_generate"


def _cases(kind: str, suffix: str = ".json") -> list[Any]:
    files = sorted((VECTORS / kind).glob(f"*{suffix}"))
    assert files, f"no vectors in {kind}"
    return [pytest.param(f, id=f.name.removesuffix(suffix)) for f in files]


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _body(value: object) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def _plain(value: object) -> Any:
    return msgspec.to_builtins(value)


def _events(chunks: list[bytes]) -> Any:
    decoder = gemini.StreamDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return _plain(events + decoder.finish())


# ---------------------------------------------------------------- client side


@pytest.mark.parametrize("path", _cases("client_requests"))
def test_decode_client_request(path: Path) -> None:
    case = _load(path)
    req = gemini.decode_request(
        _body(case["body"]), path_model=case["path_model"], path_stream=case["path_stream"]
    )
    assert req == msgspec.convert(case["ir"], ir.ChatRequest)  # unnamed fields: defaults


@pytest.mark.parametrize("path", _cases("client_requests"))
def test_passthrough_is_stable(path: Path) -> None:
    """Gemini client -> IR -> Gemini upstream; a second pass changes nothing."""
    case = _load(path)
    req = msgspec.convert(case["ir"], ir.ChatRequest)
    upstream = gemini.encode_request(req, model=req.model)
    assert json.loads(upstream) == case["upstream"]
    again = gemini.decode_request(upstream, path_model=req.model, path_stream=req.stream)
    assert json.loads(gemini.encode_request(again, model=req.model)) == case["upstream"]


@pytest.mark.parametrize("path", _cases("client_requests_bad"))
def test_bad_client_request_is_invalid_request(path: Path) -> None:
    case = _load(path)
    with pytest.raises(ir.GatewayError) as caught:
        gemini.decode_request(_body(case["body"]), path_model=case["path_model"])
    assert caught.value.info.kind == "invalid_request"
    assert case["error"] in caught.value.info.message


@pytest.mark.parametrize("path", _cases("client_responses"))
def test_encode_response(path: Path) -> None:
    case = _load(path)
    resp = msgspec.convert(case["ir"], ir.ChatResponse)
    assert json.loads(gemini.encode_response(resp)) == case["body"]


@pytest.mark.parametrize("path", _cases("stream_encode"))
def test_stream_encoder(path: Path) -> None:
    case = _load(path)
    events = msgspec.convert(case["events"], list[ir.StreamEvent])
    whole = gemini.StreamEncoder(include_usage=case["include_usage"])
    assert (whole.feed(events) + whole.finish()).decode() == case["sse"]
    one_by_one = gemini.StreamEncoder(include_usage=case["include_usage"])
    out = b"".join(one_by_one.feed([event]) for event in events) + one_by_one.finish()
    assert out.decode() == case["sse"]
    assert one_by_one.finish() == b""


@pytest.mark.parametrize("path", _cases("stream_encode"))
def test_stream_encoder_output_decodes_back(path: Path) -> None:
    """Our provider decoder reads what the client encoder writes: same text, same calls."""
    case = _load(path)
    sent_text, sent_calls, error = "", {}, None
    for event in case["events"]:
        if event["type"] in ("finish", "error"):
            error = event["error"] if event["type"] == "error" else None
            break
        if event["type"] == "text":
            sent_text += event["text"]
        elif event["type"] == "tool_start":
            sent_calls[event["index"]] = [event["name"], ""]
        elif event["type"] == "tool_delta":
            sent_calls[event["index"]][1] += event["arguments"]
    decoded = _events([case["sse"].encode()])
    assert "".join(e["text"] for e in decoded if e["type"] == "text") == sent_text
    if error is not None:
        assert decoded[-1]["type"] == "error"
        assert decoded[-1]["error"]["kind"] == error["kind"]
        return
    calls = [e["name"] for e in decoded if e["type"] == "tool_start"]
    args = [json.loads(e["arguments"]) for e in decoded if e["type"] == "tool_delta"]
    valid = [(n, a) for n, a in sent_calls.values() if _args_object(a) is not None]
    assert calls == [n for n, _ in valid]
    assert args == [json.loads(a or "{}") for _, a in valid]
    assert any(e["type"] == "finish" for e in decoded)


@pytest.mark.parametrize("path", _cases("client_errors"))
def test_encode_error(path: Path) -> None:
    case = _load(path)
    err = msgspec.convert(case["info"], ir.ErrorInfo)
    assert json.loads(gemini.encode_error(err)) == case["body"]
    assert gemini.decode_error(err.http_status, gemini.encode_error(err)).kind == err.kind


# ---------------------------------------------------------------- provider side


@pytest.mark.parametrize("path", _cases("provider_requests"))
def test_encode_request(path: Path) -> None:
    case = _load(path)
    req = msgspec.convert(case["ir"], ir.ChatRequest)
    assert json.loads(gemini.encode_request(req, model=case["model"])) == case["body"]


@pytest.mark.parametrize("path", _cases("provider_requests_bad"))
def test_encode_request_rejects_what_gemini_cannot_do(path: Path) -> None:
    case = _load(path)
    req = msgspec.convert(case["ir"], ir.ChatRequest)
    with pytest.raises(ir.GatewayError) as caught:
        gemini.encode_request(req, model=case["model"])
    assert caught.value.info.kind == "invalid_request"
    assert case["error"] in caught.value.info.message


def test_upstream_path() -> None:
    assert gemini.upstream_path(model="gemini-2.5-flash", stream=False) == (
        "/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert gemini.upstream_path(model="models/gemini-2.5-flash", stream=True) == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )


@pytest.mark.parametrize("path", _cases("responses"))
def test_decode_response(path: Path) -> None:
    case = _load(path)
    resp = gemini.decode_response(_body(case["body"]))
    assert resp == msgspec.convert(case["ir"], ir.ChatResponse)


@pytest.mark.parametrize("path", _cases("responses"))
def test_response_round_trip(path: Path) -> None:
    """Provider decode -> client encode -> provider decode keeps the IR."""
    resp = gemini.decode_response(_body(_load(path)["body"]))
    assert gemini.decode_response(gemini.encode_response(resp)) == resp


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"[1]", b'{"error": {"code": 500}}'])
def test_decode_response_rejects_garbage(body: bytes) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        gemini.decode_response(body)
    assert caught.value.info.kind in ("bad_gateway", "server_error")
    assert "html" not in caught.value.info.message


@pytest.mark.parametrize("path", _cases("streams", ".sse"))
def test_stream_decoder(path: Path) -> None:
    raw = path.read_bytes()
    expected = _load(path.with_suffix(".events.json"))
    assert _events([raw]) == expected


@pytest.mark.parametrize("path", _cases("streams", ".sse"))
def test_stream_decoder_split_at_every_offset(path: Path) -> None:
    raw = path.read_bytes()
    expected = _load(path.with_suffix(".events.json"))
    for cut in range(1, len(raw)):
        assert _events([raw[:cut], raw[cut:]]) == expected, f"split at byte {cut}"


def test_stream_decoder_byte_by_byte() -> None:
    raw = (VECTORS / "streams" / "parallel_tool_calls.sse").read_bytes()
    expected = _load(VECTORS / "streams" / "parallel_tool_calls.events.json")
    assert _events([raw[i : i + 1] for i in range(len(raw))]) == expected


def test_stream_cut_anywhere_before_the_last_event_is_an_error() -> None:
    raw = (VECTORS / "streams" / "text_crlf.sse").read_bytes()
    last_event = raw.rindex(b"data: ")
    for cut in range(0, last_event + 20):
        events = _events([raw[:cut]])
        assert events[-1]["type"] == "error", f"cut at byte {cut}"
        assert events[-1]["error"]["kind"] == "bad_gateway"


@pytest.mark.parametrize("path", _cases("errors"))
def test_decode_error(path: Path) -> None:
    case = _load(path)
    info = gemini.decode_error(case["status"], case["body"].encode())
    assert _plain(info) == case["info"]
    assert "<html" not in info.message


# ---------------------------------------------------------------- schemas


def test_upper_case_schema_becomes_json_schema() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "a": {"type": "ARRAY", "items": {"type": "NUMBER"}, "max_items": 3},
            "b": {"any_of": [{"type": "STRING"}, {"type": "INTEGER"}], "nullable": True},
        },
        "propertyOrdering": ["a", "b"],
    }
    assert schema_from_gemini(schema) == {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "number"}, "maxItems": 3},
            "b": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        },
    }


def test_property_names_are_never_rewritten() -> None:
    schema = {"type": "object", "properties": {"any_of": {"type": "string"}, "type": {}}}
    assert schema_to_gemini(schema) == {
        "type": "OBJECT",
        "properties": {"any_of": {"type": "STRING"}, "type": {}},
    }
    assert schema_from_gemini(schema)["properties"].keys() == {"any_of", "type"}


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize("path", _cases("embeddings"))
def test_embeddings(path: Path) -> None:
    case = _load(path)
    if "model" in case:  # provider side
        req = msgspec.convert(case["ir"], ir.EmbeddingRequest)
        body = gemini.encode_embedding_request(req, model=case["model"])
        assert json.loads(body) == case["body"]
        assert gemini.embedding_path(case["model"]) == case["path"]
        resp = gemini.decode_embedding_response(_body(case["response"]), model=case["model"])
        assert _plain(resp) == case["response_ir"]
    else:  # client side
        req = gemini.decode_embedding_request(_body(case["body"]), path_model=case["path_model"])
        assert _plain(req) == case["ir"]  # unnamed fields: defaults
        resp = msgspec.convert(case["response_ir"], ir.EmbeddingResponse)
        encoded = gemini.encode_embedding_response(resp, batch=case["batch"])
        assert json.loads(encoded) == case["response"]


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"requests": []}', b'{"content": {"parts": [{"inlineData": {}}]}}', b"nope"],
)
def test_bad_embedding_request(body: bytes) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        gemini.decode_embedding_request(body, path_model="text-embedding-004")
    assert caught.value.info.kind == "invalid_request"


# ---------------------------------------------------------------- robustness

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["contents", "parts", "role", "text", "functionCall", "functionResponse", "name", "args",
     "response", "inlineData", "mimeType", "data", "tools", "functionDeclarations", "parameters",
     "type", "properties", "generationConfig", "toolConfig", "systemInstruction", "candidates",
     "content", "finishReason", "usageMetadata", "error", "nullable", "anyOf", "items"]
)  # fmt: skip
_shaped = st.recursive(
    _json,
    lambda inner: st.dictionaries(_keys, inner, max_size=5) | st.lists(inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=80, deadline=None)
@given(_shaped)
def test_untrusted_json_only_raises_gateway_errors(value: object) -> None:
    body = json.dumps(value).encode()
    for call in (
        lambda: gemini.decode_request(body, path_model="m"),
        lambda: gemini.decode_response(body),
        lambda: gemini.decode_embedding_request(body, path_model="m"),
    ):
        try:
            call()
        except ir.GatewayError:
            pass
    gemini.decode_error(400, body)
    decoder = gemini.StreamDecoder()
    decoder.feed(b"data: " + body + b"\r\n\r\n")
    decoder.finish()
