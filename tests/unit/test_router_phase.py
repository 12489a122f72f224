"""The router phase driven directly: header dicts and bodies in, neutral actions out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import orjson

from extproc import ir
from extproc.decisions.routing import target_tag
from extproc.envoy.bootstrap import CLUSTER_HEADER
from extproc.phases import envelope
from extproc.phases.actions import Action, Respond
from extproc.phases.context import Context
from extproc.phases.router import RouterStream
from extproc.store import Store
from tests.unit import phase_world as world
from tests.unit.phase_world import continued, headers_of, responded

CHAT = {":method": "POST", ":path": "/v1/chat/completions"}
MESSAGES = {":method": "POST", ":path": "/v1/messages"}


async def send(
    ctx: Context, headers: dict[str, str], body: bytes | None
) -> tuple[RouterStream, Action]:
    """The request phases of one client request; the last action."""
    stream = RouterStream(ctx, {})
    action = await stream.request_headers(headers, body is None, None)
    if body is not None and not isinstance(action, Respond):
        action = await stream.request_body(body, True)
    stream.observe("request_body" if body is not None else "request_headers", action)
    return stream, action


def route(ctx: Context, headers: dict[str, str], body: bytes | None) -> Action:
    return asyncio.run(send(ctx, headers, body))[1]


def error_of(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    return error


def test_unknown_path_is_a_404_in_the_paths_dialect() -> None:
    reply = responded(route(world.context(), {":method": "GET", ":path": "/v1/nope"}, None))
    assert reply.status == 404
    assert "no such endpoint: GET /v1/nope" in error_of(reply.body)["message"]


def test_wrong_method_is_a_405_with_allow_in_anthropic_shape() -> None:
    reply = responded(route(world.context(), {":method": "GET", ":path": "/v1/messages"}, None))
    assert reply.status == 405
    assert ("allow", "POST") in reply.headers
    body = json.loads(reply.body)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


def test_model_lists_answered_without_an_upstream() -> None:
    ctx = world.context()
    models = responded(route(ctx, {":method": "GET", ":path": "/v1/models"}, None))
    assert models.status == 200
    assert [m["id"] for m in json.loads(models.body)["data"]] == [
        "solo",
        "pair",
        "embed",
        "embed-pair",
    ]
    tags = responded(route(ctx, {":method": "GET", ":path": "/api/tags"}, None))
    assert [m["name"] for m in json.loads(tags.body)["models"]] == [
        "solo",
        "pair",
        "embed",
        "embed-pair",
    ]
    labels = {"client_api": "openai", "provider": "gateway", "model": "-", "status": "200"}
    assert world.sample(ctx, "llmux_requests_total", labels) == 1


def test_request_headers_continue_with_the_dialect() -> None:
    async def scenario() -> Action:
        return await RouterStream(world.context(), {}).request_headers(MESSAGES, False, None)

    action = continued(asyncio.run(scenario()))
    assert action.dialect == "anthropic"
    assert action.response_header_mode == "SEND"


def test_a_body_that_is_not_json_is_a_400_in_the_clients_dialect() -> None:
    reply = responded(route(world.context(), MESSAGES, b"{not json"))
    assert reply.status == 400
    assert json.loads(reply.body)["type"] == "error"


def test_unknown_model_is_a_404_counted_as_answered_by_the_gateway() -> None:
    ctx = world.context()
    reply = responded(route(ctx, CHAT, world.chat_body("nope")))
    assert reply.status == 404
    assert error_of(reply.body)["message"] == "The model `nope` does not exist"
    labels = {"client_api": "openai", "provider": "gateway", "model": "nope", "status": "404"}
    assert world.sample(ctx, "llmux_requests_total", labels) == 1


def test_two_targets_send_the_envelope_to_the_models_cluster() -> None:
    ctx = world.context()
    client = {**CHAT, "authorization": "Bearer client", "x-llmux-spoof": "1"}
    action = continued(route(ctx, client, world.chat_body("pair", stream=True)))
    headers = headers_of(action)
    assert headers[CLUSTER_HEADER] == ctx.models["pair"].cluster
    assert headers["content-type"] == envelope.CONTENT_TYPE
    assert action.body is not None and headers["content-length"] == str(len(action.body))
    assert {"authorization", "x-llmux-spoof"} <= set(action.remove_headers)
    assert action.clear_route_cache
    assert action.eligible_mask is None  # no store: Envoy may pick any target
    internal = envelope.decode(action.body)
    assert isinstance(internal, envelope.ChatEnvelope)
    assert internal.request.model == "pair" and internal.request.stream
    assert internal.info.dialect == "openai" and internal.info.operation == "chat"
    assert internal.info.cluster == ctx.models["pair"].cluster
    assert internal.info.client_bytes == len(world.chat_body("pair", stream=True))


def test_embeddings_travel_as_the_embedding_variant() -> None:
    ctx = world.context()
    body = json.dumps({"model": "embed-pair", "input": ["a", "b"], "encoding_format": "base64"})
    action = continued(route(ctx, {":method": "POST", ":path": "/v1/embeddings"}, body.encode()))
    assert action.body is not None
    internal = envelope.decode(action.body)
    assert isinstance(internal, envelope.EmbeddingEnvelope)
    assert internal.request == ir.EmbeddingRequest(
        model="embed-pair", inputs=["a", "b"], encoding_format="base64"
    )
    assert internal.info.operation == "embeddings"


def test_single_target_translates_the_request_for_its_provider() -> None:
    ctx = world.context()
    body = json.dumps(
        {"model": "solo", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    )
    client = {**MESSAGES, "x-api-key": "client-key"}
    action = continued(route(ctx, client, body.encode()))
    headers = headers_of(action)
    assert headers[CLUSTER_HEADER] == ctx.models["solo"].cluster
    assert headers[":path"] == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-oa"
    assert "x-api-key" in action.remove_headers
    assert "authorization" not in action.remove_headers  # set for the provider, not removed
    assert action.body is not None
    sent = json.loads(action.body)
    assert sent["model"] == "gpt-x"
    assert sent["max_completion_tokens"] == 20
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


def test_single_target_translates_the_buffered_response_back() -> None:
    ctx = world.context()
    body = json.dumps(
        {"model": "solo", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    )

    async def scenario() -> tuple[Action, Action]:
        stream, _ = await send(ctx, MESSAGES, body.encode())
        upstream = {":status": "200", "x-envoy-upstream-service-time": "3"}
        headers = await stream.response_headers(upstream)
        answer = await stream.response_body(world.openai_completion("Hello"), True)
        stream.closed()
        return headers, answer

    headers, answer = asyncio.run(scenario())
    assert continued(headers).response_body_mode == "BUFFERED"
    assert headers_of(continued(headers))["x-llmux-model"] == "gpt-x"
    message = json.loads(continued(answer).body or b"")
    assert message["type"] == "message"
    assert message["content"] == [{"type": "text", "text": "Hello"}]
    assert message["usage"]["input_tokens"] == 5
    labels = {"client_api": "anthropic", "provider": "oa", "model": "solo", "status": "200"}
    assert world.sample(ctx, "llmux_requests_total", labels) == 1


def test_single_target_envoys_own_reply_is_a_failed_attempt_never_translated() -> None:
    ctx = world.context()

    async def scenario() -> Action:
        stream, _ = await send(ctx, CHAT, world.chat_body("solo"))
        action = await stream.response_headers({":status": "504"})
        stream.closed()
        return action

    assert continued(asyncio.run(scenario())).response_body_mode == "NONE"
    labels = {"provider": "oa", "model": "gpt-x", "status": "504"}
    assert world.sample(ctx, "llmux_upstream_attempts_total", labels) == 1


def test_a_model_whose_targets_are_all_failing_is_a_503(new_store: Callable[[], Store]) -> None:
    async def scenario() -> tuple[Action, Action]:
        store = new_store()
        ctx = world.context(store)
        first = await send(ctx, CHAT, world.chat_body("pair"))
        breaker = ctx.config.routing.breaker
        for provider, model in (("oa", "gpt-x"), ("an", "claude-x")):
            await store.record_failure(
                target_tag(provider, model),
                window_ms=30000,
                threshold=breaker.failures,
                open_ms=30000,
            )
        second = await send(ctx, CHAT, world.chat_body("pair"))
        await ctx.drain()
        await store.close()
        return first[1], second[1]

    first, second = asyncio.run(scenario())
    assert continued(first).eligible_mask == 0b11
    reply = responded(second)
    assert reply.status == 503
    assert error_of(reply.body)["message"] == "every target of this model is failing"


def test_an_open_breaker_takes_its_target_out_of_the_mask(new_store: Callable[[], Store]) -> None:
    async def scenario() -> Action:
        store = new_store()
        ctx = world.context(store)
        await store.record_failure(
            target_tag("an", "claude-x"), window_ms=30000, threshold=1, open_ms=30000
        )
        _, action = await send(ctx, CHAT, world.chat_body("pair"))
        await ctx.drain()
        await store.close()
        return action

    assert continued(asyncio.run(scenario())).eligible_mask == 0b01


def test_a_cached_answer_is_replayed_in_the_clients_dialect(new_store: Callable[[], Store]) -> None:
    config = {**world.CONFIG, "cache": {"enabled": True}}

    async def scenario() -> tuple[Action, Action]:
        store = new_store()
        ctx = world.context(store, config)
        stream, _ = await send(ctx, CHAT, world.chat_body("solo"))
        await stream.response_headers({":status": "200", "x-envoy-upstream-service-time": "1"})
        await stream.response_body(world.openai_completion("Cached"), True)
        stream.closed()
        _, again = await send(
            ctx,
            MESSAGES,
            json.dumps(
                {"model": "solo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
        )
        _, same = await send(ctx, CHAT, world.chat_body("solo"))
        await ctx.drain()
        await store.close()
        return again, same

    again, same = asyncio.run(scenario())
    hit = responded(same)
    assert hit.status == 200 and ("x-llmux-cache", "hit") in hit.headers
    assert orjson.loads(hit.body)["choices"][0]["message"]["content"] == "Cached"
    assert continued(again).body is not None  # another request (max_tokens): a miss
