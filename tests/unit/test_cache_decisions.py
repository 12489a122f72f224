"""Cache decisions, imported directly: keys, Cache-Control, entries, replay and reassembly."""

from __future__ import annotations

import msgspec
import pytest

from extproc import ir
from extproc.decisions import cache

REQUEST = ir.ChatRequest(
    model="gpt-4o-mini",
    messages=[ir.Message(role="user", content=[ir.TextPart("hello")])],
    tools=[ir.Tool(name="lookup", parameters={"type": "object", "properties": {"q": {}}})],
    temperature=0.2,
)
RESPONSE = ir.ChatResponse(
    id="chatcmpl-1",
    model="gpt-4o-mini-2024",
    created=1_800_000_000,
    content=[ir.TextPart("Hi there")],
    tool_calls=[
        ir.ToolCall(id="call_1", name="lookup", arguments='{"q":"a"}'),
        ir.ToolCall(id="call_2", name="lookup", arguments='{"q":"b"}'),
    ],
    finish_reason="tool_calls",
    usage=ir.Usage(input_tokens=12, output_tokens=7, cached_tokens=2),
)


def test_the_key_is_a_stable_sha256_hex_digest() -> None:
    key = cache.key_for("default", REQUEST)
    assert key == cache.key_for("default", REQUEST)
    assert len(key) == 64 and int(key, 16) >= 0
    # Pinned: a change here empties every deployment's cache on upgrade (last changed when
    # the IR request gained its prompt-caching fields).
    assert key == "cc7077d07456d4f636fa6a2de86415a1c0b8503ac5f29a9d72f6d258b8e0d66d"


def test_streaming_does_not_change_the_key() -> None:
    streamed = msgspec.structs.replace(REQUEST, stream=True, stream_include_usage=True)
    assert cache.key_for("default", streamed) == cache.key_for("default", REQUEST)


def test_tenants_never_share_entries() -> None:
    assert cache.key_for("acme", REQUEST) != cache.key_for("globex", REQUEST)
    # The separator keeps "a" + "b..." apart from "ab" + "...".
    assert cache.key_for("a", REQUEST) != cache.key_for("a\0", REQUEST)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.3},
        {"messages": [ir.Message(role="user", content=[ir.TextPart("hello!")])]},
        {"system": "be brief"},
        {"tools": []},
    ],
)
def test_what_changes_the_answer_changes_the_key(change: dict[str, object]) -> None:
    changed = msgspec.structs.replace(REQUEST, **change)
    assert cache.key_for("default", changed) != cache.key_for("default", REQUEST)


def test_json_key_order_inside_the_request_does_not_change_the_key() -> None:
    def with_schema(schema: dict[str, object]) -> ir.ChatRequest:
        return msgspec.structs.replace(REQUEST, tools=[ir.Tool(name="t", parameters=schema)])

    one = with_schema({"type": "object", "required": ["q"]})
    other = with_schema({"required": ["q"], "type": "object"})
    assert cache.key_for("default", one) == cache.key_for("default", other)


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        (None, (True, True)),
        ("", (True, True)),
        ("max-age=0", (True, True)),
        ("no-cache", (False, True)),
        ("No-Store", (True, False)),
        (" no-store , no-cache ", (False, False)),
        ("no-cache-please", (True, True)),  # a token, not a prefix
    ],
)
def test_cache_control_says_whether_to_look_up_and_to_store(
    header: str | None, wanted: tuple[bool, bool]
) -> None:
    assert cache.directives(header) == wanted


def test_an_entry_decodes_to_the_response_it_encoded() -> None:
    assert cache.decode_entry(cache.encode_entry(RESPONSE)) == RESPONSE


@pytest.mark.parametrize("data", [b"", b"\xc1", msgspec.msgpack.encode({"id": 1})])
def test_an_unreadable_entry_is_a_miss(data: bytes) -> None:
    assert cache.decode_entry(data) is None


def test_replay_is_the_stream_the_client_would_have_seen() -> None:
    assert cache.replay_events(RESPONSE) == [
        ir.StreamStart("chatcmpl-1", "gpt-4o-mini-2024", 1_800_000_000),
        ir.TextDelta("Hi there"),
        ir.ToolCallStart(0, "call_1", "lookup"),
        ir.ToolCallDelta(0, '{"q":"a"}'),
        ir.ToolCallStart(1, "call_2", "lookup"),
        ir.ToolCallDelta(1, '{"q":"b"}'),
        ir.StreamFinish("tool_calls"),
        ir.StreamUsage(ir.Usage(input_tokens=12, output_tokens=7, cached_tokens=2)),
    ]


def test_replay_without_usage_sends_none() -> None:
    bare = ir.ChatResponse(id="x", model="m")
    assert cache.replay_events(bare) == [ir.StreamStart("x", "m", 0), ir.StreamFinish("stop")]


@pytest.mark.parametrize("response", [RESPONSE, ir.ChatResponse(id="x", model="m")])
def test_reassembling_a_replay_gives_back_the_response(response: ir.ChatResponse) -> None:
    assembler = cache.ResponseAssembler()
    for event in cache.replay_events(response):
        assembler.feed([event])
    assert assembler.complete() == response


def test_the_assembler_joins_fragments_by_tool_call_index() -> None:
    assembler = cache.ResponseAssembler()
    assembler.feed(
        [
            ir.StreamStart("id", "m", 5),
            ir.TextDelta("a"),
            ir.ToolCallStart(1, "c1", "second"),
            ir.ToolCallStart(0, "c0", "first"),
            ir.ToolCallDelta(1, '{"x":'),
            ir.TextDelta("b"),
            ir.ToolCallDelta(0, "{}"),
            ir.ToolCallDelta(1, "1}"),
            ir.StreamFinish("tool_calls"),
        ]
    )
    assert assembler.complete() == ir.ChatResponse(
        id="id",
        model="m",
        created=5,
        content=[ir.TextPart("ab")],
        tool_calls=[ir.ToolCall("c0", "first", "{}"), ir.ToolCall("c1", "second", '{"x":1}')],
        finish_reason="tool_calls",
    )


@pytest.mark.parametrize(
    "events",
    [
        [ir.StreamStart("id", "m"), ir.TextDelta("cut")],  # never finished
        [ir.TextDelta("a"), ir.StreamFinish("error")],
        [
            ir.TextDelta("a"),
            ir.StreamError(ir.ErrorInfo(kind="bad_gateway", message="x")),
            ir.StreamFinish("stop"),
        ],
    ],
)
def test_a_stream_that_failed_or_never_finished_is_not_stored(
    events: list[ir.StreamEvent],
) -> None:
    assembler = cache.ResponseAssembler()
    assembler.feed(events)
    assert assembler.complete() is None
