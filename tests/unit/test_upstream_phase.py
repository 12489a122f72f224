"""The upstream phase driven directly: an envelope in, the provider's request and the
client's answer out; its bookkeeping read back from the store (the fake and Valkey)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from extproc import ir
from extproc.decisions.routing import CredentialState, credential_tag, target_tag
from extproc.phases import envelope
from extproc.phases.actions import Action, Hold
from extproc.phases.context import Context
from extproc.phases.upstream import UpstreamStream
from extproc.store import RequestState, Store
from tests.unit import phase_world as world
from tests.unit.phase_world import continued, headers_of, responded

T = TypeVar("T")
OPENAI_MAIN = credential_tag("oa", "main")
TARGETS = [target_tag("oa", "gpt-x"), target_tag("an", "claude-x")]


def sealed(ctx: Context, *, dialect: str = "openai", stream: bool = False, **info: Any) -> bytes:
    """The envelope the router phase would send for a chat on the `pair` model."""
    request = ir.ChatRequest(
        model="pair",
        messages=[ir.Message(role="user", content=[ir.TextPart(text="hi")])],
        stream=stream,
        stream_include_usage=stream,
    )
    facts = envelope.RequestInfo(
        dialect=dialect,
        operation="chat",
        model="pair",
        request_id="req-1",
        client_bytes=80,
        cluster=ctx.models["pair"].cluster,
        **info,
    )
    return envelope.encode(envelope.seal(facts, request))


async def opened(
    ctx: Context, body: bytes, target: int | None, headers: dict[str, str] | None = None
) -> tuple[UpstreamStream, Action]:
    stream = UpstreamStream(ctx, {})
    await stream.request_headers(headers or {}, False, target)
    return stream, await stream.request_body(body, True)


async def answered(
    stream: UpstreamStream, headers: dict[str, str], chunks: list[bytes]
) -> tuple[Action, list[Action]]:
    """The response phases: headers, then each chunk (the last ends the stream).

    A held answer to the headers (a 200) is read once the chunks released it.
    """
    head = await stream.response_headers(headers)
    bodies = [
        await stream.response_body(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks)
    ]
    stream.closed()
    if isinstance(head, Hold):
        assert head.done and head.action is not None, "the answer is still held"
        head = head.action
    return head, bodies


def with_store(new_store: Callable[[], Store], work: Callable[[Context, Store], Awaitable[T]]) -> T:
    """Run `work` with an empty store; wait for its background bookkeeping."""

    async def scenario() -> T:
        store = new_store()
        ctx = world.context(store)
        try:
            result = await work(ctx, store)
            await ctx.drain()
            return result
        finally:
            await store.close()

    return asyncio.run(scenario())


async def state(store: Store) -> RequestState:
    return await store.request_state([OPENAI_MAIN], TARGETS, None)


def test_the_request_is_translated_for_the_picked_target() -> None:
    ctx = world.context()
    earlier = {"x-envoy-attempt-count": "2", "authorization": "Bearer sk-oa", "x-llmux-x": "1"}
    _, action = asyncio.run(opened(ctx, sealed(ctx), 1, earlier))
    sent = continued(action)
    headers = headers_of(sent)
    assert headers[":path"] == "/v1/messages"
    assert headers["x-api-key"] == "sk-an"
    assert headers["anthropic-version"] == "2023-06-01"
    assert sent.remove_headers == ["authorization", "x-llmux-x"]  # the earlier attempt's
    assert sent.body is not None
    body = json.loads(sent.body)
    assert body["model"] == "claude-x"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert headers["content-length"] == str(len(sent.body))


def test_no_target_is_a_500_in_the_clients_dialect() -> None:
    ctx = world.context()
    _, action = asyncio.run(opened(ctx, sealed(ctx, dialect="anthropic"), None))
    reply = responded(action)
    assert reply.status == 500
    assert json.loads(reply.body)["error"]["message"] == (
        "request reached an upstream without a route"
    )
    assert json.loads(reply.body)["type"] == "error"


def test_a_body_that_is_not_an_envelope_is_a_500() -> None:
    _, action = asyncio.run(opened(world.context(), b'{"model": "pair"}', 0))
    assert responded(action).status == 500


def test_a_buffered_answer_is_translated_to_the_clients_dialect() -> None:
    ctx = world.context()

    async def scenario() -> tuple[Action, list[Action]]:
        stream, _ = await opened(ctx, sealed(ctx), 1, {"x-envoy-attempt-count": "2"})
        return await answered(stream, {":status": "200"}, [world.anthropic_message("Hello")])

    head, (body,) = asyncio.run(scenario())
    headers = headers_of(continued(head))
    assert continued(head).response_body_mode is None  # the filter's is static: STREAMED
    assert headers["x-llmux-provider"] == "an"
    assert headers["x-llmux-attempts"] == "2"
    assert headers["content-type"] == "application/json"
    completion = json.loads(continued(body).body or b"")
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "Hello"
    assert completion["usage"]["prompt_tokens"] == 7
    tokens = {"provider": "an", "model": "claude-x", "type": "output"}
    assert world.sample(ctx, "llmux_tokens_total", tokens) == 3
    assert world.sample(ctx, "llmux_fallbacks_total", {"model": "pair"}) == 1


def test_a_stream_is_translated_chunk_by_chunk() -> None:
    ctx = world.context()
    chunks = world.anthropic_stream(["Hel", "lo"])

    async def scenario() -> tuple[Action, list[Action]]:
        stream, _ = await opened(ctx, sealed(ctx, stream=True), 1)
        return await answered(stream, {":status": "200"}, chunks)

    head, bodies = asyncio.run(scenario())
    assert continued(head).response_body_mode is None  # the filter's is static: STREAMED
    assert headers_of(continued(head))["content-type"] == "text/event-stream"
    outs = [continued(b).body or b"" for b in bodies]
    assert b'"Hel"' in outs[2] and b'"lo"' not in outs[2]  # the first delta, as it came
    assert b'"lo"' in outs[3]
    assert outs[-1].endswith(b"data: [DONE]\n\n")
    frames = [json.loads(line[6:]) for line in b"".join(outs).split(b"\n\n") if line[6:7] == b"{"]
    usage = [f["usage"] for f in frames if f.get("usage")]
    assert [(u["prompt_tokens"], u["completion_tokens"]) for u in usage] == [(7, 2)]
    ttft = {"provider": "an", "model": "claude-x"}
    assert world.sample(ctx, "llmux_time_to_first_token_seconds_count", ttft) == 1


def test_a_provider_error_reaches_the_client_in_its_dialect() -> None:
    ctx = world.context()
    error = json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}
    )

    async def scenario() -> list[Action]:
        stream, _ = await opened(ctx, sealed(ctx), 1)
        return (await answered(stream, {":status": "400"}, [error.encode()]))[1]

    (body,) = asyncio.run(scenario())
    assert json.loads(continued(body).body or b"")["error"]["message"] == "no"


def test_an_unreadable_200_answers_the_errors_status() -> None:
    ctx = world.context()

    async def scenario() -> tuple[Action, list[Action]]:
        stream, _ = await opened(ctx, sealed(ctx), 1)
        return await answered(stream, {":status": "200"}, [b"not j", b"son"])

    head, (first, body) = asyncio.run(scenario())
    assert continued(first).body == b""  # kept until the whole answer is in
    status = headers_of(continued(head))[":status"]  # the held headers carry it
    assert status.startswith("5")
    assert json.loads(continued(body).body or b"")["error"]
    labels = {"provider": "an", "model": "claude-x", "status": status}
    assert world.sample(ctx, "llmux_upstream_attempts_total", labels) == 1


def test_a_429_cools_the_credential_down(new_store: Callable[[], Store]) -> None:
    async def work(ctx: Context, store: Store) -> RequestState:
        stream, _ = await opened(ctx, sealed(ctx), 0)
        await answered(stream, {":status": "429", "retry-after": "7"}, [b"{}"])
        await ctx.drain()
        return await state(store)

    after = with_store(new_store, work)
    assert 6000 < after.credentials[0].cooldown_ms <= 7000
    assert after.opened_ms == [0, 0]


def test_a_5xx_counts_against_the_targets_breaker(new_store: Callable[[], Store]) -> None:
    async def work(ctx: Context, store: Store) -> RequestState:
        stream, _ = await opened(ctx, sealed(ctx), 0)
        await answered(stream, {":status": "503"}, [b"{}"])
        await ctx.drain()
        return await state(store)

    after = with_store(new_store, work)
    assert after.opened_ms[0] > 0  # the breaker opens after one failure (CONFIG)
    assert after.opened_ms[1] == 0
    assert after.credentials[0].cooldown_ms == 0


def test_usage_is_charged_when_the_answer_ends(new_store: Callable[[], Store]) -> None:
    async def work(ctx: Context, store: Store) -> tuple[RequestState, RequestState, dict[str, int]]:
        body = sealed(ctx, key_id="k1", tenant="t1")
        stream, _ = await opened(ctx, body, 0)
        await stream.response_headers({":status": "200"})
        reserved = await state(store)
        await stream.response_body(world.openai_completion("Hi", prompt=5), True)
        await ctx.drain()
        return reserved, await state(store), await store.usage("key", "k1")

    reserved, charged, usage = with_store(new_store, work)
    assert reserved.credentials[0] == CredentialState(1, 0, 0)  # one request, no tokens yet
    assert charged.credentials[0] == CredentialState(1, 7, 0)  # 5 in + 2 out, the provider's
    assert usage == {"requests": 1, "input_tokens": 5, "output_tokens": 2}


def test_a_credential_out_of_quota_is_a_429_with_retry_after(
    new_store: Callable[[], Store],
) -> None:
    async def work(ctx: Context, store: Store) -> Action:
        await store.cool_down(OPENAI_MAIN, 4000)
        stream, action = await opened(ctx, sealed(ctx), 0)
        stream.closed()
        return action

    reply = responded(with_store(new_store, work))
    assert reply.status == 429
    assert ("retry-after", "4") in reply.headers


def test_embeddings_come_back_in_the_format_the_client_asked_for() -> None:
    ctx = world.context()
    facts = envelope.RequestInfo(
        dialect="openai",
        operation="embeddings",
        model="embed-pair",
        request_id="req-2",
        client_bytes=40,
        cluster=ctx.models["embed-pair"].cluster,
    )
    request = ir.EmbeddingRequest(model="embed-pair", inputs=["a"], encoding_format="base64")
    vectors = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}],
        "model": "embed-y",
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }

    async def scenario() -> tuple[Action, list[Action]]:
        body = envelope.encode(envelope.seal(facts, request))
        stream, sent = await opened(ctx, body, 1)
        assert headers_of(continued(sent))[":path"] == "/v1/embeddings"
        return await answered(stream, {":status": "200"}, [json.dumps(vectors).encode()])

    _, (body,) = asyncio.run(scenario())
    answer = json.loads(continued(body).body or b"")
    encoded = answer["data"][0]["embedding"]
    assert isinstance(encoded, str)  # base64 of little-endian float32s
    assert base64.b64decode(encoded) == struct.pack("<2f", 0.5, -1.0)
