"""The OpenAI Chat Completions codec, driven by the vectors in tests/vectors/openai_chat.

Faithfulness is checked against the official `openai` SDK: its pydantic types validate
what we encode, and the SDK client (over an httpx MockTransport) sends requests we
decode and parses the responses, streams and errors we produce.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from extproc import ir
from extproc.formats import openai_chat as codec

# openai >= 3 speaks httpx2 (httpx's successor); older releases speak httpx.
http: Any = importlib.import_module("httpx2" if importlib.util.find_spec("httpx2") else "httpx")
VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "openai_chat"


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _files(sub: str, pattern: str = "*.json") -> list[Path]:
    return sorted((VECTORS / sub).glob(pattern))


def _body(case: dict[str, Any]) -> bytes:
    return case["raw"].encode() if "raw" in case else json.dumps(case["body"]).encode()


def _events(data: list[Any]) -> list[ir.StreamEvent]:
    return msgspec.convert(data, list[ir.StreamEvent])


def _sse_payloads(raw: bytes) -> list[Any]:
    """The data payloads of an LF-framed SSE body, asserting the exact framing."""
    text = raw.decode()
    assert text.endswith("\n\n") or not text
    out: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ---------------------------------------------------------------- client requests


@pytest.mark.parametrize("path", _files("client_requests"), ids=lambda p: p.stem)
def test_client_request_decodes_to_ir(path: Path) -> None:
    case = _load(path)
    got = codec.decode_request(json.dumps(case["body"]).encode())
    assert got == msgspec.convert(case["ir"], ir.ChatRequest)


@pytest.mark.parametrize("path", _files("client_requests"), ids=lambda p: p.stem)
def test_passthrough_encodes_upstream_body(path: Path) -> None:
    case = _load(path)
    request = codec.decode_request(json.dumps(case["body"]).encode())
    body = json.loads(codec.encode_request(request, model=case["upstream_model"]))
    assert body == case["upstream"]
    # Decoding our own upstream body gives the same IR (streams always ask for usage).
    again = codec.decode_request(json.dumps(body).encode())
    expected = msgspec.structs.replace(request, model=case["upstream_model"])
    if request.stream:
        expected = msgspec.structs.replace(expected, stream_include_usage=True)
    assert again == expected


@pytest.mark.parametrize("case", _load(VECTORS / "invalid_requests.json"), ids=lambda c: c["name"])
def test_invalid_client_request(case: dict[str, Any]) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        codec.decode_request(_body(case))
    info = caught.value.info
    assert info.kind == "invalid_request"
    assert case["message"] in info.message
    if "param" in case:
        assert info.param == case["param"]


_KEYS = ["type", "text", "role", "content", "image_url", "url", "tool_calls", "id", "function"]
_KEYS += ["name", "arguments", "tool_call_id", "json_schema", "refusal"]
_LEAF = st.none() | st.booleans() | st.integers(-2, 2)
_LEAF |= st.sampled_from(["text", "image_url", "user", "assistant", "tool", "data:;base64,"])
_JSON = st.recursive(
    _LEAF,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), c, max_size=4),
    max_leaves=10,
)


@settings(max_examples=40, deadline=None)
@given(
    messages=st.lists(_JSON, max_size=3),
    extra=st.dictionaries(
        st.sampled_from(["tools", "tool_choice", "response_format", "stop"]), _JSON, max_size=2
    ),
)
def test_odd_client_input_only_raises_invalid_request(messages: Any, extra: Any) -> None:
    body = json.dumps({"model": "m", "messages": messages, **extra}).encode()
    try:
        request = codec.decode_request(body)
        codec.encode_request(request, model="up")
    except ir.GatewayError as exc:
        assert exc.info.kind == "invalid_request"


def test_path_model_and_stream_fill_gaps() -> None:
    body = b'{"messages": [{"role": "user", "content": "x"}]}'
    request = codec.decode_request(body, path_model="m", path_stream=True)
    assert (request.model, request.stream, request.stream_include_usage) == ("m", True, False)


@pytest.mark.parametrize("path", _files("provider_requests"), ids=lambda p: p.stem)
def test_provider_request_from_foreign_ir(path: Path) -> None:
    case = _load(path)
    request = msgspec.convert(case["ir"], ir.ChatRequest)
    if "error" in case:
        with pytest.raises(ir.GatewayError) as caught:
            codec.encode_request(request, model=case["model"])
        assert caught.value.info.kind == "invalid_request"
        assert case["error"] in caught.value.info.message
    else:
        assert json.loads(codec.encode_request(request, model=case["model"])) == case["upstream"]


def test_upstream_path() -> None:
    assert codec.upstream_path(model="gpt-4o", stream=True) == "/v1/chat/completions"


# ---------------------------------------------------------------- responses


@pytest.mark.parametrize("path", _files("responses"), ids=lambda p: p.stem)
def test_response_decodes_and_round_trips(path: Path) -> None:
    case = _load(path)
    expected = msgspec.convert(case["ir"], ir.ChatResponse)
    assert codec.decode_response(json.dumps(case["body"]).encode()) == expected
    encoded = codec.encode_response(expected)
    ChatCompletion.model_validate_json(encoded)  # the SDK's own type accepts it
    assert codec.decode_response(encoded) == expected


@pytest.mark.parametrize("case", _load(VECTORS / "invalid_responses.json"), ids=lambda c: c["name"])
def test_invalid_upstream_response_is_bad_gateway(case: dict[str, Any]) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        codec.decode_response(_body(case))
    assert caught.value.info.kind == "bad_gateway"


def test_encode_response_content_null_only_with_tool_calls() -> None:
    call = ir.ToolCall(id="c", name="f", arguments="{}")
    tool_only = json.loads(
        codec.encode_response(ir.ChatResponse(id="i", model="m", tool_calls=[call]))
    )
    empty = json.loads(codec.encode_response(ir.ChatResponse(id="i", model="m")))
    assert tool_only["choices"][0]["message"]["content"] is None
    assert empty["choices"][0]["message"]["content"] == ""
    assert "tool_calls" not in empty["choices"][0]["message"] and "usage" not in empty


# ---------------------------------------------------------------- upstream streams


def _stream_cases() -> list[tuple[Path, Path]]:
    return [(p, p.with_suffix(".events.json")) for p in _files("streams", "*.sse")]


def _decode_all(decoder: codec.StreamDecoder, chunks: list[bytes]) -> list[ir.StreamEvent]:
    events: list[ir.StreamEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.finish()


@pytest.mark.parametrize(("raw", "expected"), _stream_cases(), ids=lambda p: p.stem)
def test_stream_decodes_at_every_split(raw: Path, expected: Path) -> None:
    data = raw.read_bytes()
    want = _events(_load(expected)["events"])
    assert _decode_all(codec.StreamDecoder(), [data]) == want
    for cut in range(len(data) + 1):
        assert _decode_all(codec.StreamDecoder(), [data[:cut], data[cut:]]) == want, cut


def test_stream_decoder_ignores_input_after_the_end() -> None:
    decoder = codec.StreamDecoder()
    decoder.feed((VECTORS / "streams" / "text_with_usage.sse").read_bytes())
    assert decoder.feed(b'data: {"choices": [{"delta": {"content": "late"}}]}\n\n') == []
    assert decoder.finish() == []


# ---------------------------------------------------------------- client streams


def _encode_stream(case: dict[str, Any], one_by_one: bool) -> bytes:
    encoder = codec.StreamEncoder(include_usage=case["include_usage"])
    events = _events(case["events"])
    groups = [[e] for e in events] if one_by_one else [events]
    return b"".join(encoder.feed(group) for group in groups) + encoder.finish()


@pytest.mark.parametrize("path", _files("client_streams"), ids=lambda p: p.stem)
def test_stream_encoder_output(path: Path) -> None:
    case = _load(path)
    raw = _encode_stream(case, one_by_one=False)
    assert raw == _encode_stream(case, one_by_one=True)
    assert _sse_payloads(raw) == case["chunks"]
    for payload in case["chunks"]:
        if isinstance(payload, dict) and "error" not in payload:
            ChatCompletionChunk.model_validate_json(json.dumps(payload))


@pytest.mark.parametrize(("raw", "expected"), _stream_cases(), ids=lambda p: p.stem)
def test_stream_round_trip_through_client_encoder(raw: Path, expected: Path) -> None:
    """Upstream stream -> IR -> our client stream -> IR again gives the same events."""
    events = _events(_load(expected)["events"])
    encoder = codec.StreamEncoder(include_usage=True)
    replay = encoder.feed(events) + encoder.finish()
    assert replay.endswith(b"data: [DONE]\n\n")
    again = _decode_all(codec.StreamDecoder(), [replay])
    if again and isinstance(again[0], ir.StreamStart) and again[:1] != events[:1]:
        again = again[1:]  # no start event upstream: the encoder made one up
    assert again == events


def test_stream_encoder_finish_is_idempotent() -> None:
    encoder = codec.StreamEncoder(include_usage=False)
    encoder.feed([ir.StreamFinish("stop")])
    assert encoder.finish() == b""
    assert encoder.feed([ir.TextDelta("late")]) == b""


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("case", _load(VECTORS / "errors.json"), ids=lambda c: c["name"])
def test_decode_error(case: dict[str, Any]) -> None:
    got = codec.decode_error(case["status"], case["body"].encode())
    assert got == msgspec.convert(case["ir"], ir.ErrorInfo)


@pytest.mark.parametrize("kind", list(ir.ERROR_STATUS))
def test_encode_error_shape(kind: str) -> None:
    info = ir.ErrorInfo(kind=kind, message="boom", param="p")  # type: ignore[arg-type]
    body = json.loads(codec.encode_error(info))
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["message"], body["error"]["param"]) == ("boom", "p")
    again = codec.decode_error(info.http_status, json.dumps(body).encode())
    assert (again.kind, again.message, again.param) == (kind, "boom", "p")


# ---------------------------------------------------------------- embeddings, models

EMBEDDINGS = _load(VECTORS / "embeddings.json")


@pytest.mark.parametrize("case", EMBEDDINGS["client_requests"])
def test_embedding_request(case: dict[str, Any]) -> None:
    request = codec.decode_embedding_request(json.dumps(case["body"]).encode())
    assert request == msgspec.convert(case["ir"], ir.EmbeddingRequest)
    upstream = json.loads(codec.encode_embedding_request(request, model="up"))
    assert upstream["model"] == "up" and upstream["input"] == request.inputs
    assert upstream.get("dimensions") == request.dimensions


@pytest.mark.parametrize("case", EMBEDDINGS["invalid_client_requests"])
def test_invalid_embedding_request(case: dict[str, Any]) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        codec.decode_embedding_request(json.dumps(case["body"]).encode())
    assert caught.value.info.kind == "invalid_request"
    assert case["message"] in caught.value.info.message


@pytest.mark.parametrize("case", EMBEDDINGS["upstream_responses"])
def test_embedding_response(case: dict[str, Any]) -> None:
    expected = msgspec.convert(case["ir"], ir.EmbeddingResponse)
    assert codec.decode_embedding_response(json.dumps(case["body"]).encode()) == expected
    formats: tuple[Literal["float", "base64"], ...] = ("float", "base64")
    for fmt in formats:
        encoded = codec.encode_embedding_response(expected, encoding_format=fmt)
        if fmt == "float":  # the SDK's type models floats; it decodes base64 before validating
            CreateEmbeddingResponse.model_validate_json(encoded)
        assert codec.decode_embedding_response(encoded).vectors == expected.vectors


@pytest.mark.parametrize("body", EMBEDDINGS["invalid_upstream_responses"])
def test_invalid_embedding_response(body: Any) -> None:
    with pytest.raises(ir.GatewayError) as caught:
        codec.decode_embedding_response(json.dumps(body).encode())
    assert caught.value.info.kind == "bad_gateway"


def test_model_list_matches_the_sdk() -> None:
    from openai.types import Model

    body = json.loads(codec.encode_model_list(["a", "b"], owned_by="me"))
    assert body["object"] == "list"
    assert [Model.model_validate(m).id for m in body["data"]] == ["a", "b"]
    assert body["data"][0]["owned_by"] == "me"
    assert codec.embedding_path() == "/v1/embeddings"


# ---------------------------------------------------------------- the official SDK end to end

Handler = Callable[[Any], Any]


def _client(handler: Handler) -> openai.OpenAI:
    client = http.Client(transport=http.MockTransport(handler))
    return openai.OpenAI(api_key="k", base_url="http://gw/v1", http_client=client, max_retries=0)


def test_sdk_request_decodes_and_response_parses() -> None:
    seen: list[ir.ChatRequest] = []
    answer = ir.ChatResponse(
        id="chatcmpl-1",
        model="gpt-4o",
        tool_calls=[ir.ToolCall(id="call_1", name="f", arguments='{"a":1}')],
        finish_reason="tool_calls",
        usage=ir.Usage(input_tokens=5, output_tokens=3, cached_tokens=2),
        created=1,
    )

    def handler(request: Any) -> Any:
        seen.append(codec.decode_request(request.content))
        return http.Response(200, content=codec.encode_response(answer))

    completion = _client(handler).chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="auto",
        max_completion_tokens=9,
    )
    assert seen[0].system == "s" and seen[0].max_tokens == 9 and seen[0].tools[0].name == "f"
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.arguments) == ("call_1", '{"a":1}')  # type: ignore[union-attr]
    assert completion.usage.prompt_tokens_details.cached_tokens == 2  # type: ignore[union-attr]


def _stream_handler(events: list[ir.StreamEvent], include_usage: bool) -> Handler:
    def handler(request: Any) -> Any:
        assert codec.decode_request(request.content).stream_include_usage == include_usage
        encoder = codec.StreamEncoder(include_usage=include_usage)
        body = encoder.feed(events) + encoder.finish()
        headers = {"content-type": codec.STREAM_CONTENT_TYPE}
        return http.Response(200, content=body, headers=headers)

    return handler


def test_sdk_reads_our_stream_with_usage() -> None:
    events = _events(_load(VECTORS / "streams" / "parallel_tool_calls.events.json")["events"])
    client = _client(_stream_handler([*events[:1], ir.TextDelta("ok"), *events[1:]], True))
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[1].choices[0].delta.content == "ok"
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens_details.cached_tokens == 64  # type: ignore[union-attr]


def test_sdk_raises_on_in_band_stream_error() -> None:
    error = ir.StreamError(ir.ErrorInfo(kind="overloaded", message="try later"))
    client = _client(_stream_handler([ir.StreamStart(id="i", model="m"), error], False))
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="try later"):
        list(stream)


@pytest.mark.parametrize(
    ("kind", "exc"),
    [
        ("invalid_request", openai.BadRequestError),
        ("authentication", openai.AuthenticationError),
        ("not_found", openai.NotFoundError),
        ("rate_limit", openai.RateLimitError),
        ("overloaded", openai.InternalServerError),
    ],
)
def test_sdk_maps_our_errors(kind: str, exc: type[Exception]) -> None:
    info = ir.ErrorInfo(kind=kind, message=f"{kind} happened")  # type: ignore[arg-type]

    def handler(request: Any) -> Any:
        return http.Response(info.http_status, content=codec.encode_error(info))

    with pytest.raises(exc, match=f"{kind} happened"):
        _client(handler).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )


def test_sdk_embeddings_default_base64_request() -> None:
    def handler(request: Any) -> Any:
        req = codec.decode_embedding_request(request.content)
        vectors = [[0.5, -0.25] for _ in req.inputs]
        response = ir.EmbeddingResponse(model=req.model, vectors=vectors, usage=ir.Usage(3))
        return http.Response(200, content=codec.encode_embedding_response(response))

    result = _client(handler).embeddings.create(model="e", input=["a", "b"])
    assert [d.embedding for d in result.data] == [[0.5, -0.25], [0.5, -0.25]]
    assert result.usage.prompt_tokens == 3
