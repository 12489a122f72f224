"""The Anthropic codec against the official `anthropic` SDK (over a mock transport).

Kept apart from test_anthropic_messages.py because importing the SDK takes seconds.
The SDK parses what the client side emits (messages, event streams, errors) and
produces the requests the client side decodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx  # anthropic 2.x refuses plain httpx clients
import msgspec
import pytest

from extproc import ir
from extproc.formats import anthropic_messages as codec
from tests.unit.test_anthropic_messages import (
    _cases,
    _decode_stream,
    _encode_stream,
    _load,
)


def _client(handler: Any) -> anthropic.Anthropic:
    transport = httpx.MockTransport(handler)
    return anthropic.Anthropic(
        api_key="k", base_url="http://llmux.test", http_client=httpx.Client(transport=transport)
    )


def _sdk_stream(body: bytes) -> anthropic.types.Message:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with _client(handler).messages.stream(model="m", max_tokens=1, messages=[]) as stream:
        return stream.get_final_message()


def test_decode_what_the_sdk_sends() -> None:
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        resp = ir.ChatResponse(id="msg_1", model="m", content=[ir.TextPart("ok")])
        return httpx.Response(200, content=codec.encode_response(resp))

    message = _client(handler).messages.create(
        model="claude-test",
        max_tokens=64,
        system=[{"type": "text", "text": "sys"}],
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        metadata={"user_id": "u"},
    )
    assert message.content[0].type == "text" and message.content[0].text == "ok"
    req = codec.decode_request(sent[0])
    assert (req.model, req.max_tokens, req.system, req.user) == ("claude-test", 64, "sys", "u")
    assert req.parallel_tool_calls is False and req.tool_choice == ir.ToolChoice(mode="auto")
    assert req.messages[1].tool_calls == [ir.ToolCall(id="t1", name="f", arguments='{"a":1}')]
    assert req.messages[2] == ir.Message(role="tool", tool_call_id="t1", name="f")


@pytest.mark.parametrize("path", _cases("responses"))
def test_sdk_accepts_encoded_response(path: Path) -> None:
    resp = msgspec.convert(_load(path)["ir"], ir.ChatResponse)
    anthropic.types.Message.model_validate_json(codec.encode_response(resp))


@pytest.mark.parametrize("kind", list(ir.ERROR_STATUS))
def test_encode_error_round_trips(kind: str) -> None:
    info = ir.ErrorInfo(kind=kind, message="nope")  # type: ignore[arg-type]
    body = codec.encode_error(info)
    if kind != "request_too_large":  # documented for 413, yet missing from the SDK's union
        assert anthropic.types.ErrorResponse.model_validate_json(body).error.message == "nope"
    expected = "server_error" if kind == "bad_gateway" else kind
    assert codec.decode_error(info.http_status, body).kind == expected


@pytest.mark.parametrize("path", _cases("stream_encode"))
def test_sdk_reads_encoded_stream(path: Path) -> None:
    vector = _load(path)
    body = path.with_suffix(".sse").read_bytes()
    if "sdk_error" in vector:
        with pytest.raises(anthropic.APIStatusError) as caught:
            _sdk_stream(body)
        assert caught.value.body == vector["sdk_error"]
        return
    message = _sdk_stream(body)
    assert message.model_dump(mode="json", exclude_none=True) == vector["sdk_message"]


def _comparable(message: anthropic.types.Message) -> dict[str, Any]:
    """What survives the IR: no thinking blocks, cache writes count as plain input."""
    dumped = message.model_dump(mode="json", exclude_none=True)
    dumped["content"] = [b for b in dumped["content"] if b["type"] != "thinking"]
    dumped.pop("stop_sequence", None)
    usage = dumped["usage"]
    usage["input_tokens"] += usage.pop("cache_creation_input_tokens", 0)
    if not usage.get("cache_read_input_tokens"):
        usage.pop("cache_read_input_tokens", None)
    return dumped


@pytest.mark.parametrize("path", _cases("streams", "*.sse"))
def test_stream_passthrough_is_seen_alike_by_the_sdk(path: Path) -> None:
    """Anthropic upstream -> IR -> Anthropic client: the SDK sees the same message."""
    raw = path.read_bytes()
    events = _decode_stream([raw])
    replay = _encode_stream(events)
    if not isinstance(events[-1], ir.StreamError):
        assert _comparable(_sdk_stream(replay)) == _comparable(_sdk_stream(raw))
        return
    with pytest.raises(anthropic.APIStatusError) as caught:
        _sdk_stream(replay)
    assert caught.value.body["error"]["message"] == events[-1].error.message  # type: ignore[index]
