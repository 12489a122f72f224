"""Ollama /api/chat, /api/generate, /api/tags and /api/embed codec, driven by the
vector files in tests/vectors/ollama_chat/ (a new quirk is a new vector file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import msgspec
import ollama
import pytest

from extproc import ir
from extproc.formats import ollama_chat as oc

VECTORS = Path(__file__).parent.parent / "vectors" / "ollama_chat"


def _files(folder: str, pattern: str = "*.json") -> list[Path]:
    return sorted((VECTORS / folder).glob(pattern))


def _cases(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return cases


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _body(case: dict[str, Any]) -> bytes:
    return case["raw"].encode() if "raw" in case else json.dumps(case["body"]).encode()


def _events(data: Any) -> list[ir.StreamEvent]:
    return msgspec.convert(data, list[ir.StreamEvent])


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# ---------------------------------------------------------------- client requests

CLIENT_REQUESTS = _files("client_requests")


@pytest.mark.parametrize("path", CLIENT_REQUESTS, ids=_ids(CLIENT_REQUESTS))
def test_decode_request(path: Path) -> None:
    case = _load(path)
    req = oc.decode_request(_body(case))
    assert req == msgspec.convert(case["ir"], ir.ChatRequest)  # unnamed fields: defaults


@pytest.mark.parametrize("path", CLIENT_REQUESTS, ids=_ids(CLIENT_REQUESTS))
def test_passthrough_round_trip(path: Path) -> None:
    """Client decode -> IR -> provider encode of the same format."""
    case = _load(path)
    req = oc.decode_request(_body(case))
    assert json.loads(oc.encode_request(req, model=req.model)) == case["upstream"]
    # What we send upstream decodes back to the same IR: ids and names are stable.
    assert oc.decode_request(oc.encode_request(req, model=req.model)) == req


_REPLY = [
    ir.StreamStart("id", "llama3.2", 1_700_000_000),
    ir.TextDelta("Hello"),
    ir.TextDelta(" there"),
    ir.ToolCallStart(0, "call_7", "get_weather"),
    ir.ToolCallDelta(0, '{"city": "Paris"}'),
    ir.StreamFinish("tool_calls"),
    ir.StreamUsage(ir.Usage(input_tokens=11, output_tokens=4)),
]
_RESPONSE = ir.ChatResponse(
    id="id",
    model="llama3.2",
    content=[ir.TextPart("Hello there")],
    tool_calls=[ir.ToolCall("call_7", "get_weather", '{"city": "Paris"}')],
    finish_reason="tool_calls",
    usage=ir.Usage(input_tokens=11, output_tokens=4),
)


def _gateway(seen: list[Any], request: httpx.Request) -> httpx.Response:
    """A stand-in for llmux: our client codec on both directions of each route."""
    path = request.url.path
    if path == "/api/tags":
        return httpx.Response(200, content=oc.encode_tags(["llama3.2"]))
    if path == "/api/embed":
        seen.append(oc.decode_embedding_request(request.content))
        reply = ir.EmbeddingResponse(model="e", vectors=[[0.5]], usage=ir.Usage(input_tokens=1))
        return httpx.Response(200, content=oc.encode_embedding_response(reply))
    generate = path == "/api/generate"
    req = (oc.decode_generate_request if generate else oc.decode_request)(request.content)
    seen.append(req)
    if not req.stream:
        encode = oc.encode_generate_response if generate else oc.encode_response
        return httpx.Response(200, content=encode(_RESPONSE))
    encoder = oc.GenerateStreamEncoder() if generate else oc.StreamEncoder()
    return httpx.Response(200, content=encoder.feed(_REPLY) + encoder.finish())


def _client(seen: list[Any]) -> ollama.Client:
    transport = httpx.MockTransport(lambda request: _gateway(seen, request))
    return ollama.Client(host="http://llmux.test", transport=transport)


def test_official_client_chat() -> None:
    seen: list[Any] = []
    client = _client(seen)
    history = [
        {"role": "user", "content": "Weather?", "images": [b"\xff\xd8\xff\xe0"]},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "2", "tool_name": "f"},
    ]
    resp = client.chat("llama3.2", messages=history, format="json", options={"num_predict": 9})
    assert resp.message.content == "Hello there" and resp.done_reason == "stop"
    calls = resp.message.tool_calls or []
    assert calls[0].function.arguments == {"city": "Paris"}
    req = seen[-1]
    assert req.stream is False and req.max_tokens == 9
    assert req.messages[0].content[0] == ir.ImagePart(data="/9j/4A==", media_type="image/jpeg")
    assert req.messages[2].tool_call_id == req.messages[1].tool_calls[0].id == "call_0"
    parts = list(client.chat("llama3.2", messages=history, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "Hello there"
    assert parts[-1].done and parts[-1].eval_count == 4
    assert [c.function.name for p in parts for c in p.message.tool_calls or []] == ["get_weather"]


def test_official_client_generate_tags_embed() -> None:
    seen: list[Any] = []
    client = _client(seen)
    assert client.generate("llama3.2", prompt="Hi", system="S").response == "Hello there"
    assert seen[-1].system == "S" and seen[-1].stream is False
    parts = list(client.generate("llama3.2", prompt="Hi", stream=True))
    assert "".join(p.response or "" for p in parts) == "Hello there" and parts[-1].done
    assert [m.model for m in client.list().models] == ["llama3.2"]
    assert client.embed("e", input=["a", "b"]).embeddings == [[0.5]]
    assert seen[-1] == ir.EmbeddingRequest(model="e", inputs=["a", "b"])


@pytest.mark.parametrize("case", _cases("invalid_requests.json"), ids=lambda c: c["message"])
def test_invalid_request(case: dict[str, Any]) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        oc.decode_request(_body(case))
    assert caught.value.info.kind == "invalid_request"
    assert case["message"] in caught.value.info.message


def test_path_model_fills_a_missing_model() -> None:
    body = b'{"messages":[{"role":"user","content":"hi"}]}'
    assert oc.decode_request(body, path_model="m").model == "m"


# ---------------------------------------------------------------- provider requests

PROVIDER_REQUESTS = _files("provider_requests")


@pytest.mark.parametrize("path", PROVIDER_REQUESTS, ids=_ids(PROVIDER_REQUESTS))
def test_encode_request(path: Path) -> None:
    case = _load(path)
    req = msgspec.convert(case["ir"], ir.ChatRequest)
    if "error" in case:
        with pytest.raises(ir.GatewayError) as caught:
            oc.encode_request(req, model=case["model"])
        assert caught.value.info.kind == "invalid_request"
        assert case["error"] in caught.value.info.message
    else:
        assert json.loads(oc.encode_request(req, model=case["model"])) == case["body"]


def test_upstream_path() -> None:
    assert oc.upstream_path(model="x", stream=True) == "/api/chat"
    assert oc.upstream_path(model="x", stream=False) == "/api/chat"


# ---------------------------------------------------------------- responses

RESPONSES = _files("responses")


@pytest.mark.parametrize("path", RESPONSES, ids=_ids(RESPONSES))
def test_decode_response(path: Path) -> None:
    case = _load(path)
    resp = oc.decode_response(json.dumps(case["body"]).encode())
    assert resp == msgspec.convert(case["ir"], ir.ChatResponse)


@pytest.mark.parametrize("path", RESPONSES, ids=_ids(RESPONSES))
def test_encode_response_is_read_by_official_client(path: Path) -> None:
    resp = msgspec.convert(_load(path)["ir"], ir.ChatResponse)
    body = oc.encode_response(resp)
    parsed = ollama.ChatResponse.model_validate_json(body)
    assert parsed.done is True
    assert parsed.message.content == "".join(p.text for p in resp.content)  # type: ignore[union-attr]
    assert oc.decode_response(body) == msgspec.structs.replace(resp, id=oc.decode_response(body).id)


def test_encode_response_done_reason() -> None:
    resp = ir.ChatResponse(id="x", model="m", finish_reason="length", created=1_700_000_000)
    body = json.loads(oc.encode_response(resp))
    assert body["done_reason"] == "length"
    assert body["created_at"] == "2023-11-14T22:13:20Z"
    tool = msgspec.structs.replace(resp, finish_reason="tool_calls")
    assert json.loads(oc.encode_response(tool))["done_reason"] == "stop"


def test_encode_response_rejects_non_object_arguments() -> None:
    resp = ir.ChatResponse(id="x", model="m", tool_calls=[ir.ToolCall("a", "f", "[1]")])
    with pytest.raises(ir.GatewayError) as caught:
        oc.encode_response(resp)
    assert caught.value.info.kind == "bad_gateway"


def test_decode_response_bad_bodies() -> None:
    for body, kind in ((b"<html>", "bad_gateway"), (b'{"error":"boom"}', "server_error")):
        with pytest.raises(ir.GatewayError) as caught:
            oc.decode_response(body)
        assert caught.value.info.kind == kind


# ---------------------------------------------------------------- provider streams

STREAMS = _files("streams", "*.ndjson")


def _decode_stream(chunks: list[bytes]) -> list[ir.StreamEvent]:
    decoder = oc.StreamDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.finish()


@pytest.mark.parametrize("path", STREAMS, ids=_ids(STREAMS))
def test_stream_decoder_every_split(path: Path) -> None:
    raw = path.read_bytes()
    expected = _events(_load(path.with_suffix(".events.json")))
    assert _decode_stream([raw]) == expected
    for cut in range(len(raw) + 1):
        assert _decode_stream([raw[:cut], raw[cut:]]) == expected, cut


def _comparable(events: list[ir.StreamEvent]) -> list[Any]:
    """Events minus what Ollama's dialect cannot carry: start ids, error kinds."""
    return [
        ir.StreamStart("", e.model)
        if isinstance(e, ir.StreamStart)
        else e.error.message
        if isinstance(e, ir.StreamError)
        else e
        for e in events
    ]


@pytest.mark.parametrize("path", STREAMS, ids=_ids(STREAMS))
def test_stream_encoder_round_trip(path: Path) -> None:
    """Decoded events, re-encoded for an Ollama client, decode to the same events."""
    events = _events(_load(path.with_suffix(".events.json")))
    encoder = oc.StreamEncoder()
    out = encoder.feed(events) + encoder.finish()
    assert encoder.finish() == b""
    for line in out.splitlines():
        if b'"error"' not in line:
            ollama.ChatResponse.model_validate_json(line)
    assert _comparable(_decode_stream([out])) == _comparable(events)


def _start() -> list[ir.StreamEvent]:
    return [ir.StreamStart("id", "m", 1_700_000_000), ir.TextDelta("Hi")]


def test_stream_encoder_usage_after_finish() -> None:
    encoder = oc.StreamEncoder()
    out = encoder.feed([*_start(), ir.StreamFinish("stop")])
    out += encoder.feed([ir.StreamUsage(ir.Usage(input_tokens=7, output_tokens=3))])
    out += encoder.finish()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0] == {
        "model": "m",
        "created_at": "2023-11-14T22:13:20Z",
        "message": {"role": "assistant", "content": "Hi"},
        "done": False,
    }
    assert lines[-1]["done"] is True
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (7, 3)
    assert len(lines) == 2


def test_stream_encoder_streamed_tool_arguments_sent_whole() -> None:
    encoder = oc.StreamEncoder()
    events: list[ir.StreamEvent] = [
        ir.StreamStart("id", "m"),
        ir.ToolCallStart(0, "call_1", "get_weather"),
        ir.ToolCallDelta(0, '{"city":'),
        ir.ToolCallStart(1, "call_2", "get_time"),
        ir.ToolCallDelta(0, ' "Paris"}'),
        ir.ToolCallDelta(1, ""),
    ]
    assert encoder.feed(events) == b""
    out = encoder.feed([ir.StreamFinish("tool_calls")]) + encoder.finish()
    lines = [ollama.ChatResponse.model_validate_json(line) for line in out.splitlines()]
    calls = lines[0].message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert lines[1].done is True and lines[1].done_reason == "stop"


def test_stream_encoder_errors() -> None:
    error = ir.ErrorInfo(kind="overloaded", message="upstream overloaded")
    encoder = oc.StreamEncoder()
    out = encoder.feed([*_start(), ir.StreamError(error), ir.TextDelta("late")])
    assert out.splitlines()[-1] == b'{"error":"upstream overloaded"}'
    assert encoder.finish() == b""
    cut = oc.StreamEncoder()
    cut.feed(_start())
    assert json.loads(cut.finish()) == {"error": "upstream stream ended before completion"}
    bad = oc.StreamEncoder()
    bad.feed([ir.ToolCallStart(0, "a", "f"), ir.ToolCallDelta(0, '{"x":')])
    assert "not a JSON object" in json.loads(bad.feed([ir.StreamFinish("tool_calls")]))["error"]


def test_encode_error() -> None:
    info = ir.ErrorInfo(kind="not_found", message="model 'x' not found")
    assert oc.encode_error(info) == b'{"error":"model \'x\' not found"}'
    with pytest.raises(ollama.ResponseError, match="not found"):
        raise ollama.ResponseError(oc.encode_error(info).decode(), info.http_status)


@pytest.mark.parametrize("case", _cases("errors.json"), ids=lambda c: f"{c['status']}")
def test_decode_error(case: dict[str, Any]) -> None:
    info = oc.decode_error(case["status"], case["raw"].encode())
    assert msgspec.to_builtins(info) == {"retry_after": None, "param": None, **case["info"]}
    assert "<" not in info.message


# ---------------------------------------------------------------- /api/generate

GENERATE = _files("generate_requests")


@pytest.mark.parametrize("path", GENERATE, ids=_ids(GENERATE))
def test_decode_generate_request(path: Path) -> None:
    case = _load(path)
    req = oc.decode_generate_request(_body(case))
    assert req == msgspec.convert(case["ir"], ir.ChatRequest)


@pytest.mark.parametrize(
    "case", _cases("invalid_generate_requests.json"), ids=lambda c: c["message"]
)
def test_invalid_generate_request(case: dict[str, Any]) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        oc.decode_generate_request(_body(case))
    assert caught.value.info.kind == "invalid_request"
    assert case["message"] in caught.value.info.message


def test_generate_response_and_stream() -> None:
    usage = ir.Usage(input_tokens=5, output_tokens=2)
    resp = ir.ChatResponse(id="x", model="m", content=[ir.TextPart("Hi!")], usage=usage)
    parsed = ollama.GenerateResponse.model_validate_json(oc.encode_generate_response(resp))
    assert (parsed.response, parsed.done, parsed.eval_count) == ("Hi!", True, 2)
    encoder = oc.GenerateStreamEncoder()
    out = encoder.feed([*_start(), ir.StreamFinish("length"), ir.StreamUsage(usage)])
    out += encoder.finish()
    lines = [ollama.GenerateResponse.model_validate_json(line) for line in out.splitlines()]
    assert [(line.response, line.done) for line in lines] == [("Hi", False), ("", True)]
    assert lines[-1].done_reason == "length" and lines[-1].prompt_eval_count == 5


# ---------------------------------------------------------------- /api/tags, /api/embed


def test_encode_tags_is_read_by_official_client() -> None:
    body = oc.encode_tags(["llama3.2", "gpt-4o"])
    parsed = ollama.ListResponse.model_validate_json(body)
    assert [m.model for m in parsed.models] == ["llama3.2", "gpt-4o"]
    assert [m["name"] for m in json.loads(body)["models"]] == ["llama3.2", "gpt-4o"]


@pytest.mark.parametrize("case", _cases("embeddings.json"), ids=lambda c: str(c["body"]["input"]))
def test_embedding_request(case: dict[str, Any]) -> None:
    req = oc.decode_embedding_request(_body(case))
    assert msgspec.to_builtins(req) == case["ir"]
    body = oc.encode_embedding_request(req, model="nomic-embed-text")
    assert json.loads(body) == case["upstream"]
    assert oc.embedding_path() == "/api/embed"


@pytest.mark.parametrize(
    "case", _cases("invalid_embedding_requests.json"), ids=lambda c: c["message"]
)
def test_invalid_embedding_request(case: dict[str, Any]) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        oc.decode_embedding_request(_body(case))
    assert caught.value.info.kind == "invalid_request"
    assert case["message"] in caught.value.info.message


def test_embedding_response_round_trip() -> None:
    usage = ir.Usage(input_tokens=4)
    resp = ir.EmbeddingResponse(model="all-minilm", vectors=[[0.1, -0.2], [0.3, 0.4]], usage=usage)
    body = oc.encode_embedding_response(resp)
    parsed = ollama.EmbedResponse.model_validate_json(body)
    assert [list(v) for v in parsed.embeddings] == resp.vectors
    assert oc.decode_embedding_response(body) == resp
    with pytest.raises(ir.GatewayError):
        oc.decode_embedding_response(b'{"error":"model not found"}')
