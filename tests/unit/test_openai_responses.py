"""The Responses API client codec (formats/openai_responses) and conversation state decisions.

Requests are decoded from what the official `openai` SDK sends, answers and event
streams are parsed by the SDK itself (over a mock transport), so the codec is held
to what `responses.create` / `responses.stream` accept, not to our reading of them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import msgspec
import openai
import pytest

from extproc import ir
from extproc.decisions import conversations
from extproc.formats import openai_responses as codec
from extproc.formats.endpoints import Endpoint, allowed_methods, classify
from extproc.formats.framing import SSEParser
from extproc.phases import conversation
from tests.fakes.clock import FakeClock
from tests.fakes.memory_store import MemoryStore
from tests.unit import phase_world as world
from tests.unit.test_router_phase import route

USAGE = ir.Usage(input_tokens=7, output_tokens=5, cached_tokens=3, cache_write_tokens=1)
WEATHER: dict[str, object] = {"type": "object", "properties": {"city": {"type": "string"}}}


def _sdk(handler: Any) -> openai.OpenAI:
    transport = httpx.MockTransport(handler)
    return openai.OpenAI(
        api_key="k", base_url="http://llmux.test/v1", http_client=httpx.Client(transport=transport)
    )


def _answering(body: bytes, sent: list[bytes] | None = None, stream: bool = False) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        if sent is not None:
            sent.append(request.content)
        kind = "text/event-stream" if stream else "application/json"
        return httpx.Response(200, headers={"content-type": kind}, content=body)

    return _sdk(handler)


def _decode(**body: Any) -> ir.ChatRequest:
    return codec.decode_request(json.dumps({"model": "m", **body}).encode())


def _refused(**body: Any) -> ir.ErrorInfo:
    with pytest.raises(ir.GatewayError) as caught:
        _decode(**body)
    assert caught.value.info.kind == "invalid_request"
    return caught.value.info


# ---------------------------------------------------------------- requests


def test_decode_what_the_sdk_sends() -> None:
    sent: list[bytes] = []
    answer = codec.encode_response(ir.ChatResponse(id="resp_1", model="m"))
    _answering(answer, sent).responses.create(
        model="gpt",
        instructions="Be terse",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,AAAA",
                        "detail": "auto",
                    },
                ],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "weather",
                "arguments": '{"city":"P"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        tools=[{"type": "function", "name": "weather", "parameters": WEATHER, "strict": True}],
        tool_choice={"type": "function", "name": "weather"},
        text={"format": {"type": "json_schema", "name": "a", "schema": WEATHER, "strict": True}},
        max_output_tokens=99,
        temperature=0.5,
        top_p=0.9,
        metadata={"run": "7"},
    )
    request = codec.decode_request(sent[0])
    assert request.model == "gpt" and request.system == "Be terse"
    assert request.messages == [
        ir.Message(
            role="user",
            content=[
                ir.TextPart("What is this?"),
                ir.ImagePart(data="AAAA", media_type="image/png"),
            ],
        ),
        ir.Message(role="assistant", tool_calls=[ir.ToolCall("c1", "weather", '{"city":"P"}')]),
        ir.Message(role="tool", content=[ir.TextPart("sunny")], tool_call_id="c1", name="weather"),
    ]
    assert request.tools == [ir.Tool(name="weather", parameters=WEATHER)]
    assert request.tool_choice == ir.ToolChoice(mode="tool", name="weather")
    assert request.response_format == ir.ResponseFormat("json_schema", WEATHER, "a", True)
    assert (request.max_tokens, request.temperature, request.top_p) == (99, 0.5, 0.9)
    assert request.stream is False
    assert codec.decode_conversation(sent[0]) == codec.Conversation(None, True, {"run": "7"})


def test_a_string_input_is_one_user_message_and_a_stream_asks_for_usage() -> None:
    request = _decode(input="hi", stream=True)
    assert request.messages == [ir.Message(role="user", content=[ir.TextPart("hi")])]
    assert request.stream and request.stream_include_usage


def test_assistant_text_and_its_calls_are_one_turn() -> None:
    request = _decode(
        input=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Let me look"}]},
            {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "a", "output": "1"},
            {"type": "function_call_output", "call_id": "b", "output": "2"},
        ]
    )
    roles = [m.role for m in request.messages]
    assert roles == ["user", "assistant", "tool", "tool"]
    assert [c.id for c in request.messages[1].tool_calls] == ["a", "b"]
    assert request.messages[1].content == [ir.TextPart("Let me look")]
    assert [m.name for m in request.messages[2:]] == ["f", "g"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
        ({"input": "hi", "tools": [{"type": "file_search"}]}, "tools[0].type", "file_search"),
        ({"input": []}, "input", "non-empty"),
        ({"input": [{"type": "reasoning", "id": "r"}]}, "input[0].type", "reasoning"),
        ({"input": [{"role": "system", "content": "x"}]}, "input[0].role", "instructions"),
        (
            {"input": [{"type": "function_call_output", "call_id": "x", "output": "1"}]},
            "input[0].call_id",
            "'x'",
        ),
        ({"input": "hi", "tool_choice": {"type": "web_search"}}, "tool_choice", "function"),
        ({"input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format.schema", ""),
        ({"input": "hi", "reasoning": {"effort": "huge"}}, "reasoning.effort", "one of"),
        ({"input": "hi", "background": True}, "background", "background"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0]",
            "file_id",
        ),
    ],
)
def test_what_no_provider_can_run_is_a_clear_400(
    body: dict[str, Any], param: str, words: str
) -> None:
    info = _refused(**body)
    assert info.param == param
    assert words in info.message


def test_bad_bodies_are_refused() -> None:
    for body in (b"{", b'{"model": 3}', b'{"input": "hi"}'):
        with pytest.raises(ir.GatewayError):
            codec.decode_request(body)


def test_a_continued_turn_may_answer_calls_it_does_not_contain() -> None:
    output = {"type": "function_call_output", "call_id": "c9", "output": "1"}
    request = _decode(input=[output], previous_response_id="resp_1", store=False)
    assert request.messages == [
        ir.Message(role="tool", content=[ir.TextPart("1")], tool_call_id="c9")
    ]
    body = json.dumps(
        {"model": "m", "input": [output], "previous_response_id": "resp_1", "store": False}
    )
    assert codec.decode_conversation(body.encode()) == codec.Conversation("resp_1", False, {})


# ---------------------------------------------------------------- answers


def test_the_sdk_reads_a_complete_answer() -> None:
    answer = ir.ChatResponse(
        id="resp_abc",
        model="gpt-4o",
        content=[ir.TextPart("Calling")],
        tool_calls=[ir.ToolCall("c1", "weather", '{"city":"Paris"}')],
        finish_reason="tool_calls",
        usage=USAGE,
        created=1700000000,
    )
    response = _answering(codec.encode_response(answer)).responses.create(model="m", input="x")
    assert response.id == "resp_abc" and response.status == "completed"
    assert response.output_text == "Calling"
    message, call = response.output
    assert message.type == "message" and call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("c1", "weather", '{"city":"Paris"}')
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (7, 5, 12)
    assert usage.input_tokens_details.cached_tokens == 3
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_a_cut_answer_is_incomplete_with_its_reason() -> None:
    answer = ir.ChatResponse(id="x1", model="m", content=[ir.TextPart("a")], finish_reason="length")
    body = json.loads(codec.encode_response(answer))
    assert body["id"] == "resp_x1"  # a provider's id gets the Responses prefix
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"


def test_errors_are_openai_errors() -> None:
    info = ir.ErrorInfo(kind="rate_limit", message="slow down")
    assert json.loads(codec.encode_error(info))["error"]["type"] == "rate_limit_error"


# ---------------------------------------------------------------- streams

TEXT_STREAM: list[ir.StreamEvent] = [
    ir.StreamStart("resp_s1", "gpt-4o", 1700000000),
    ir.TextDelta("Hel"),
    ir.TextDelta("lo"),
    ir.StreamFinish("stop"),
    ir.StreamUsage(USAGE),  # OpenAI sends usage after the finish
]
TOOL_STREAM: list[ir.StreamEvent] = [
    ir.StreamStart("resp_s2", "gpt-4o"),
    ir.TextDelta("Looking"),
    ir.ToolCallStart(0, "c1", "weather"),
    ir.ToolCallStart(1, "c2", "weather"),
    ir.ToolCallDelta(0, '{"city":'),
    ir.ToolCallDelta(1, '{"city":"London"}'),
    ir.ToolCallDelta(0, '"Paris"}'),
    ir.StreamFinish("tool_calls"),
    ir.StreamUsage(USAGE),
]


def _encode(events: list[ir.StreamEvent], *, one_by_one: bool = False) -> bytes:
    encoder = codec.StreamEncoder(include_usage=True)
    if one_by_one:
        out = b"".join(encoder.feed([e]) for e in events)
    else:
        out = encoder.feed(events)
    return out + encoder.finish()


def _events(raw: bytes) -> list[dict[str, Any]]:
    parsed = SSEParser().feed(raw)
    bodies = [json.loads(e.data) for e in parsed]
    assert [e.event for e in parsed] == [b["type"] for b in bodies]
    assert [b["sequence_number"] for b in bodies] == list(range(len(bodies)))
    return bodies


def test_the_sdk_stream_helper_assembles_a_text_stream() -> None:
    raw = _encode(TEXT_STREAM)
    assert raw == _encode(TEXT_STREAM, one_by_one=True)
    with _answering(raw, stream=True).responses.stream(model="m", input="x") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Hel", "lo"]
    assert final.output_text == "Hello" and final.id == "resp_s1"
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 3
    kinds = [e["type"] for e in _events(raw)]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_the_sdk_stream_helper_assembles_parallel_calls() -> None:
    raw = _encode(TOOL_STREAM)
    assert raw == _encode(TOOL_STREAM, one_by_one=True)
    with _answering(raw, stream=True).responses.stream(model="m", input="x") as stream:
        argument_deltas = [
            e.delta for e in stream if e.type == "response.function_call_arguments.delta"
        ]
        final = stream.get_final_response()
    assert argument_deltas == ['{"city":', '{"city":"London"}', '"Paris"}']
    message, first, second = final.output
    assert message.type == "message" and final.output_text == "Looking"
    assert first.type == "function_call" and second.type == "function_call"
    assert (first.call_id, first.arguments) == ("c1", '{"city":"Paris"}')
    assert (second.call_id, second.arguments) == ("c2", '{"city":"London"}')
    assert final.status == "completed"


def test_create_with_stream_true_yields_typed_events() -> None:
    raw = _encode(TEXT_STREAM)
    events = list(_answering(raw, stream=True).responses.create(model="m", input="x", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hello"


@pytest.mark.parametrize(
    "events",
    [
        [ir.StreamStart("resp_c", "m"), ir.TextDelta("Hel")],  # cut: finish() never saw an end
        [ir.StreamStart("resp_c", "m"), ir.StreamError(ir.ErrorInfo("overloaded", "busy"))],
        [ir.StreamError(ir.ErrorInfo("rate_limit", "slow"))],  # before the start
    ],
)
def test_a_failed_stream_ends_with_error_and_response_failed(events: list[ir.StreamEvent]) -> None:
    bodies = _events(_encode(events))
    assert bodies[0]["type"] == "response.created"
    assert [b["type"] for b in bodies[-2:]] == ["error", "response.failed"]
    assert bodies[-1]["response"]["status"] == "failed"
    assert bodies[-1]["response"]["error"]["message"] == bodies[-2]["message"]
    assert bodies[-1]["response"]["id"] == bodies[0]["response"]["id"]


def test_a_stream_cut_by_length_is_incomplete() -> None:
    events: list[ir.StreamEvent] = [
        ir.StreamStart("resp_l", "m"),
        ir.TextDelta("a"),
        ir.StreamFinish("length"),
    ]
    last = _events(_encode(events))[-1]
    assert last["type"] == "response.completed"
    assert last["response"]["status"] == "incomplete"


# ---------------------------------------------------------------- endpoints


def test_stored_responses_have_their_endpoints() -> None:
    assert classify("POST", "/v1/responses") == Endpoint("responses", "chat")
    found = classify("GET", "/v1/responses/resp_abc")
    assert found is not None and (found.operation, found.resource) == ("retrieve", "resp_abc")
    found = classify("DELETE", "/v1/responses/resp_abc?x=1")
    assert found is not None and found.operation == "delete"
    assert classify("PUT", "/v1/responses/resp_abc") is None
    assert classify("GET", "/v1/responses/a/b") is None
    assert allowed_methods("/v1/responses/resp_abc") == ["DELETE", "GET"]
    assert allowed_methods("/v1/responses") == ["POST"]


# ---------------------------------------------------------------- conversation state


def test_a_record_continues_with_the_call_names_it_knows() -> None:
    asked = ir.ChatRequest(
        model="m", messages=[ir.Message(role="user", content=[ir.TextPart("q")])]
    )
    answer = ir.ChatResponse(
        id="resp_1", model="m", tool_calls=[ir.ToolCall("c1", "weather", "{}")]
    )
    record = conversations.decode_record(conversations.encode_record(asked, answer))
    assert record == conversations.StoredResponse(asked.messages, answer)
    result = ir.Message(role="tool", content=[ir.TextPart("sunny")], tool_call_id="c1")
    follow = ir.ChatRequest(model="m2", messages=[result], system="new")
    merged = conversations.continued(follow, record)
    assert [m.role for m in merged.messages] == ["user", "assistant", "tool"]
    assert merged.messages[1].tool_calls == answer.tool_calls
    assert merged.messages[2].name == "weather"
    assert (merged.model, merged.system) == ("m2", "new")


def test_a_result_for_an_unknown_call_is_refused() -> None:
    record = conversations.StoredResponse([], ir.ChatResponse(id="r", model="m"))
    stray = ir.Message(role="tool", tool_call_id="nope")
    with pytest.raises(ir.GatewayError) as caught:
        conversations.continued(ir.ChatRequest(model="m", messages=[stray]), record)
    assert "'nope'" in caught.value.info.message


def test_an_unreadable_record_is_as_if_expired() -> None:
    assert conversations.decode_record(b"\xc1") is None
    assert conversations.decode_record(msgspec.msgpack.encode([1])) is None


def test_reasoning_tokens_reach_the_usage_from_openai_and_gemini() -> None:
    from extproc.formats import gemini_generate, openai_chat

    chat = {
        "id": "c",
        "model": "o3",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}}],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 30,
            "completion_tokens_details": {"reasoning_tokens": 28},
        },
    }
    gemini = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "4"}]}}],
        "usageMetadata": {
            "promptTokenCount": 9,
            "candidatesTokenCount": 2,
            "thoughtsTokenCount": 28,
        },
    }
    for answer in (
        openai_chat.decode_response(json.dumps(chat).encode()),
        gemini_generate.PROVIDER.decode_response(json.dumps(gemini).encode()),
    ):
        assert answer.usage is not None
        assert (answer.usage.output_tokens, answer.usage.reasoning_tokens) == (30, 28)
        body = json.loads(codec.encode_response(answer))
        assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": 28}


def test_reasoning_effort_maps_to_each_providers_own_or_is_refused() -> None:
    from extproc.formats import anthropic_messages, gemini_generate, ollama_chat, openai_chat

    def sent(encode: Any, effort: str) -> dict[str, Any]:
        request = _decode(input="hi", reasoning={"effort": effort})
        body: dict[str, Any] = json.loads(encode(request, model="x"))
        return body

    anthropic = anthropic_messages.provider("2023-06-01").encode_request
    assert sent(openai_chat.encode_request, "minimal")["reasoning_effort"] == "minimal"
    assert sent(anthropic, "high")["output_config"] == {"effort": "high"}
    assert "output_config" not in sent(anthropic, "none")  # no thinking unless enabled
    gemini = sent(gemini_generate.PROVIDER.encode_request, "low")["generationConfig"]
    assert gemini["thinkingConfig"] == {"thinkingLevel": "LOW"}
    assert sent(ollama_chat.encode_request, "medium")["think"] == "medium"
    assert sent(ollama_chat.encode_request, "none")["think"] is False
    for encode, effort, provider in (
        (anthropic, "minimal", "anthropic"),
        (gemini_generate.PROVIDER.encode_request, "none", "gemini"),
        (ollama_chat.encode_request, "xhigh", "ollama"),
    ):
        with pytest.raises(ir.GatewayError) as caught:
            sent(encode, effort)
        assert caught.value.info.param == "reasoning.effort"
        assert provider in caught.value.info.message
    # Without an effort nothing is sent, and the cache key stays what it was.
    plain = _decode(input="hi")
    assert "reasoning_effort" not in json.loads(openai_chat.encode_request(plain, model="x"))
    assert b"reasoning_effort" not in msgspec.json.encode(plain)


def test_items_cut_by_length_are_incomplete_wherever_they_appear() -> None:
    events: list[ir.StreamEvent] = [
        ir.StreamStart("resp_i", "m"),
        ir.TextDelta("a"),
        ir.StreamFinish("length"),
    ]
    bodies = _events(_encode(events))
    done = [b for b in bodies if b["type"] == "response.output_item.done"]
    assert [b["item"]["status"] for b in done] == ["incomplete"]
    assert bodies[-1]["response"]["output"][0]["status"] == "incomplete"


# ---------------------------------------------------------------- store errors (phases)

RESPONSES = {":method": "POST", ":path": "/v1/responses"}
CONTINUED = json.dumps({"model": "solo", "input": "hi", "previous_response_id": "resp_1"}).encode()


def _failing_store() -> MemoryStore:
    store = MemoryStore(FakeClock())
    store.failing = True
    return store


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_an_unreadable_store_fails_what_needs_it_with_a_503(on_error: str) -> None:
    ctx = world.context(_failing_store(), {**world.CONFIG, "store": {"on_error": on_error}})
    for headers, body in (
        (RESPONSES, CONTINUED),
        ({":method": "GET", ":path": "/v1/responses/resp_1"}, None),
        ({":method": "DELETE", ":path": "/v1/responses/resp_1"}, None),
    ):
        reply = world.responded(route(ctx, headers, body))
        assert reply.status == 503
        assert json.loads(reply.body)["error"]["type"] == "service_unavailable_error"


def test_a_store_error_while_keeping_an_answer_never_fails_the_answer() -> None:
    store = _failing_store()
    ctx = world.context(store)
    answer = ir.ChatResponse(id="resp_k", model="m", content=[ir.TextPart("ok")])
    key = store.response_key("global", "resp_k")
    asyncio.run(conversation.keep(ctx, key, _decode(input="hi"), answer))  # does not raise
    assert world.sample(ctx, "llmux_store_errors_total", {}) == 1


def test_without_a_store_a_previous_response_is_not_found() -> None:
    reply = world.responded(route(world.context(), RESPONSES, CONTINUED))
    assert reply.status == 404
    assert json.loads(reply.body)["error"]["type"] == "not_found_error"


def test_a_function_tool_with_parameters_that_are_not_an_object_is_refused() -> None:
    tool = {"type": "function", "name": "f", "parameters": [1]}
    assert _refused(input="hi", tools=[tool]).param == "tools[0]"
