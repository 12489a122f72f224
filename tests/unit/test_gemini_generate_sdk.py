"""The Gemini codec against the official google-genai SDK, with no network.

The SDK talks to an httpx MockTransport: its requests are decoded by our client-side
decoder and our encoders answer, so the SDK's own parsers judge our bytes (non-stream
JSON, CRLF-framed SSE, in-band stream errors, error bodies). Kept apart from
test_gemini_generate.py because importing the SDK alone takes seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest
from google import genai
from google.genai import errors, types

from extproc import ir
from extproc.formats import gemini_generate as gemini
from extproc.formats.gemini_generate.wire import _args_object

VECTORS = Path(__file__).parent.parent / "vectors" / "gemini_generate"
PATH = re.compile(r"/v1(?:beta)?/models/([^:/]+):(generateContent|streamGenerateContent)")


def _client(answer: Callable[[ir.ChatRequest], httpx.Response]) -> genai.Client:
    """An SDK client whose requests go through decode_request into `answer`."""

    def handler(request: httpx.Request) -> httpx.Response:
        match = PATH.search(request.url.path)
        assert match, request.url
        stream = match.group(2) == "streamGenerateContent"
        assert not stream or request.url.params.get("alt") == "sse"
        req = gemini.decode_request(request.content, path_model=match.group(1), path_stream=stream)
        return answer(req)

    transport = httpx.MockTransport(handler)
    options = types.HttpOptions(
        base_url="http://gateway", httpx_client=httpx.Client(transport=transport)
    )
    return genai.Client(api_key="test-key", http_options=options)


def _sse(events: list[ir.StreamEvent]) -> httpx.Response:
    encoder = gemini.StreamEncoder()
    body = encoder.feed(events) + encoder.finish()
    return httpx.Response(200, content=body, headers={"content-type": gemini.STREAM_CONTENT_TYPE})


@pytest.mark.parametrize(
    "path", sorted((VECTORS / "client_responses").glob("*.json")), ids=lambda p: p.stem
)
def test_sdk_validates_encoded_responses(path: Path) -> None:
    case = json.loads(path.read_text())
    resp = msgspec.convert(case["ir"], ir.ChatResponse)
    parsed = types.GenerateContentResponse.model_validate_json(gemini.encode_response(resp))
    assert parsed.response_id == resp.id
    calls = parsed.function_calls or []
    assert [c.name for c in calls] == [
        c.name for c in resp.tool_calls if _args_object(c.arguments) is not None
    ]


def test_sdk_round_trip_with_tools_and_images() -> None:
    seen: list[ir.ChatRequest] = []

    def answer(req: ir.ChatRequest) -> httpx.Response:
        seen.append(req)
        call = ir.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
        resp = ir.ChatResponse(
            id="resp-1",
            model="gpt-4o",
            content=[ir.TextPart("Checking.")],
            tool_calls=[call],
            finish_reason="tool_calls",
            usage=ir.Usage(input_tokens=20, output_tokens=5, cached_tokens=8),
        )
        return httpx.Response(200, content=gemini.encode_response(resp))

    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    config = types.GenerateContentConfig(
        system_instruction="Be brief",
        tools=[get_weather],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        response_schema=None,
        temperature=0.1,
    )
    contents = [
        types.Part.from_text(text="Weather in Paris?"),
        types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png"),
    ]
    result = _client(answer).models.generate_content(
        model="gemini-2.5-flash", contents=contents, config=config
    )
    req = seen[0]
    assert req.model == "gemini-2.5-flash" and req.system == "Be brief"
    assert isinstance(req.messages[0].content[1], ir.ImagePart)
    assert req.tools[0].parameters["properties"] == {"city": {"type": "string"}}
    assert result.text == "Checking."
    assert result.function_calls[0].args == {"city": "Paris"}
    assert result.function_calls[0].id == "call_1"
    assert result.usage_metadata.cached_content_token_count == 8


def test_sdk_reads_our_stream() -> None:
    events: list[ir.StreamEvent] = [
        ir.StreamStart(id="s-1", model="claude"),
        ir.TextDelta("Hello "),
        ir.TextDelta("world"),
        ir.ToolCallStart(index=0, id="toolu_1", name="lookup"),
        ir.ToolCallDelta(index=0, arguments='{"q": '),
        ir.ToolCallDelta(index=0, arguments='"x"}'),
        ir.StreamFinish("tool_calls"),
        ir.StreamUsage(ir.Usage(input_tokens=7, output_tokens=3)),
    ]
    client = _client(lambda req: _sse(events))
    chunks = list(client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
    assert "".join(c.text or "" for c in chunks) == "Hello world"
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.function_calls[0].args == {"q": "x"}
    assert last.usage_metadata.total_token_count == 10


def test_sdk_sees_in_band_stream_error() -> None:
    info = ir.ErrorInfo(kind="overloaded", message="upstream overloaded")
    events = [ir.StreamStart(id="s", model="m"), ir.TextDelta("Par"), ir.StreamError(info)]
    client = _client(lambda req: _sse(events))
    stream = client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi")
    assert next(stream).text == "Par"
    with pytest.raises(errors.APIError) as caught:
        next(stream)
    assert caught.value.code == 503 and caught.value.status == "UNAVAILABLE"


def test_sdk_reads_our_error_body() -> None:
    info = ir.ErrorInfo(kind="rate_limit", message="slow down", retry_after=3)
    client = _client(lambda req: httpx.Response(429, content=gemini.encode_error(info)))
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    assert caught.value.message == "slow down"


def test_sdk_rejected_request_gets_gemini_error() -> None:
    def answer(req: ir.ChatRequest) -> httpx.Response:
        raise AssertionError("not reached")

    def handler(request: httpx.Request) -> httpx.Response:
        try:
            gemini.decode_request(request.content, path_model="m")
        except ir.GatewayError as exc:
            return httpx.Response(exc.info.http_status, content=gemini.encode_error(exc.info))
        return answer(ir.ChatRequest(model="m", messages=[]))

    options = types.HttpOptions(
        base_url="http://gateway",
        httpx_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    client = genai.Client(api_key="k", http_options=options)
    config = types.GenerateContentConfig(candidate_count=2)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=config)
    assert caught.value.code == 400 and "candidateCount" in caught.value.message
