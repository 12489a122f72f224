"""The Responses API passthrough through real Envoy: `providers[].responses_api: true`.

A Responses request whose target serves /v1/responses itself reaches it with the
client's body (only `model` changed) and the gateway's key, and its answer comes
back as the provider wrote it; usage is charged like a translated answer's. A
model mixing such a target with an Anthropic one falls back across both, streamed
or not. The provider keeps its own conversations; the gateway's stored ones still
continue through translation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.faults.kit import wait_until
from tests.harness import Gateway, Valkey, provider_config
from tests.integration.conftest import close_client
from tests.integration.test_costs import ADMIN, create_key, key_usage, metric_total, nano
from tests.simulated import Fault, SimulatedProviders
from tests.simulated.scenario import Usage
from tests.unit.test_responses_passthrough import WEATHER

pytestmark = pytest.mark.integration

USER = "Say hello through the passthrough"
PRICES = {
    "direct/gpt-up": {"input": 0.15, "output": 0.60, "cached_input": 0.075},
    "an/claude-up": {"input": 1.0, "output": 5.0},
}


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(
        {
            "providers": [
                provider_config("direct", "openai", sim.base_url, "sk-direct", responses_api=True),
                provider_config("an", "anthropic", sim.base_url, "sk-an"),
            ],
            "models": [
                {"name": "solo", "targets": [{"provider": "direct", "model": "gpt-up"}]},
                {"name": "claude", "targets": [{"provider": "an", "model": "claude-up"}]},
                {
                    "name": "pair",
                    "targets": [
                        {"provider": "direct", "model": "gpt-up"},
                        {"provider": "an", "model": "claude-up", "priority": 1},
                    ],
                },
            ],
            "auth": {"required": True, "admin_key": ADMIN},
            "pricing": PRICES,
        },
        store_url=valkey.url,
    )


@pytest.fixture
def key(gateway: Gateway, db: redis.Redis) -> tuple[str, str]:
    return create_key(gateway)


@pytest.fixture
def client(gateway: Gateway, key: tuple[str, str]) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key[1], max_retries=0)
    yield sdk
    close_client(sdk)


def charged(sim: SimulatedProviders) -> tuple[Usage, int]:
    """The usage the simulated providers reported for answered requests, and its price."""
    usage, cost = Usage(0, 0), 0
    for r in sim.requests:
        if r.status == 200 and r.usage is not None and r.fault is None:
            price = PRICES["direct/gpt-up" if r.provider == "openai" else "an/claude-up"]
            cost += nano(r.usage, price)
            usage = Usage(
                usage.input_tokens + r.usage.input_tokens,
                usage.output_tokens + r.usage.output_tokens,
                usage.cached_tokens + r.usage.cached_tokens,
            )
    return usage, cost


def assert_charged(db: redis.Redis, key_id: str, sim: SimulatedProviders, requests: int) -> None:
    usage, cost = charged(sim)
    expected = {
        "requests": requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_nano_usd": cost,
    }
    if usage.cached_tokens:
        expected["cached_tokens"] = usage.cached_tokens
    wait_until(lambda: key_usage(db, key_id) == expected)


def test_create_goes_to_the_providers_responses_api_untranslated(
    client: openai.OpenAI,
    sim: SimulatedProviders,
    gateway: Gateway,
    db: redis.Redis,
    key: tuple[str, str],
) -> None:
    sim.configure(cached_tokens=4)
    asked: dict[str, Any] = {
        "input": [{"role": "user", "content": [{"type": "input_text", "text": USER}]}],
        "instructions": "Be terse",
        "metadata": {"ticket": "42"},
        "reasoning": {"effort": "low"},
        "temperature": 0.5,
    }
    response = client.responses.create(model="solo", **asked)
    rec = sim.last_request("openai")
    assert rec.path == "/v1/responses"
    assert rec.body == {"model": "gpt-up", **asked}  # only the model is the gateway's
    assert rec.headers["authorization"] == "Bearer sk-direct"
    # The provider's own answer: its id, its model, its usage details.
    assert response.id.startswith("resp_sim") and response.model == "gpt-up"
    assert response.output_text.startswith("Hello from openai model gpt-up. You said: Say")
    assert rec.usage is not None and response.usage is not None
    assert response.usage.input_tokens == rec.usage.input_tokens
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 1
    assert_charged(db, key[0], sim, requests=1)
    tokens = metric_total(gateway, "llmux_tokens_total", provider="direct", type="output")
    assert tokens >= rec.usage.output_tokens
    # The provider keeps the conversation: the gateway does not know its ids.
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_stream_is_the_providers_event_stream(
    client: openai.OpenAI,
    gateway: Gateway,
    key: tuple[str, str],
    sim: SimulatedProviders,
    db: redis.Redis,
) -> None:
    body = {"model": "solo", "input": USER, "stream": True}
    headers = {"authorization": f"Bearer {key[1]}"}
    url = gateway.url + "/v1/responses"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=10) as reply:
        raw = b"".join(reply.iter_bytes())
    assert reply.status_code == 200 and reply.headers["x-llmux-provider"] == "direct"
    blocks = [b for b in raw.split(b"\n\n") if b.strip()]
    events = [json.loads(b.split(b"\ndata: ", 1)[1]) for b in blocks]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["id"].startswith("resp_sim")
    assert events[-1]["type"] == "response.completed"
    with client.responses.stream(model="solo", input="Weather?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert sim.last_request("openai").path == "/v1/responses"
    assert_charged(db, key[0], sim, requests=2)


def test_a_failing_passthrough_target_falls_back_to_a_translated_one(
    client: openai.OpenAI, sim: SimulatedProviders, db: redis.Redis, key: tuple[str, str]
) -> None:
    sim.inject(Fault.error(500), provider="openai")
    answer = client.responses.create(model="pair", input=USER)
    assert answer.output_text.startswith("Hello from anthropic model claude-up.")
    assert answer.id.startswith("resp_") and not answer.id.startswith("resp_sim")
    assert [r.path for r in sim.requests] == ["/v1/responses", "/v1/messages"]
    sim.inject(Fault.error(500), provider="openai")
    with client.responses.stream(model="pair", input=USER) as stream:
        final = stream.get_final_response()
    assert final.output_text.startswith("Hello from anthropic model claude-up.")
    # An error event before any content fails over too.
    sim.inject(Fault.error_event(status=500, after_chunks=2), provider="openai")
    with client.responses.stream(model="pair", input=USER) as stream:
        final = stream.get_final_response()
    assert final.output_text.startswith("Hello from anthropic model claude-up.")
    assert [r.path for r in sim.requests][2:] == ["/v1/responses", "/v1/messages"] * 2
    assert_charged(db, key[0], sim, requests=3)


def test_a_healthy_passthrough_target_of_a_pair_answers_untranslated(
    client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    with client.responses.stream(model="pair", input=USER) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.id.startswith("resp_sim") and "".join(deltas) == final.output_text
    answer = client.responses.create(model="pair", input=USER)  # held until its end
    assert answer.id.startswith("resp_sim") and answer.output_text == final.output_text
    assert [r.path for r in sim.requests] == ["/v1/responses"] * 2


def test_conversations_continue_where_they_are_kept(
    client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    first = client.responses.create(model="solo", input=USER)
    client.responses.create(model="solo", input="And again", previous_response_id=first.id)
    assert sim.last_request("openai").body["previous_response_id"] == first.id
    # A conversation the gateway stored goes on through translation, for any target.
    kept = client.responses.create(model="claude", input=USER)
    client.responses.create(model="solo", input="And again", previous_response_id=kept.id)
    rec = sim.last_request("openai")
    assert rec.path == "/v1/chat/completions"
    assert [m["role"] for m in rec.body["messages"]] == ["user", "assistant", "user"]


def test_built_in_tools_reach_a_passthrough_target_only(
    client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    tools: Any = [{"type": "web_search"}, WEATHER]
    answer = client.responses.create(model="solo", input=USER, tools=tools)
    assert answer.id.startswith("resp_sim")
    assert sim.last_request("openai").body["tools"] == tools
    # A target that translates refuses them, as a model without passthrough does at once.
    with pytest.raises(openai.BadRequestError, match="web_search"):
        client.responses.create(model="claude", input=USER, tools=tools)
    sim.inject(Fault.error(500), provider="openai")
    with pytest.raises(openai.BadRequestError, match="web_search"):
        client.responses.create(model="pair", input=USER, tools=tools)
    assert [r.path for r in sim.requests] == ["/v1/responses"] * 2


def test_a_stream_cut_after_content_ends_with_an_error_event(
    gateway: Gateway, key: tuple[str, str], sim: SimulatedProviders
) -> None:
    sim.inject(Fault.malformed_json(after_chunks=5), provider="openai")
    body = {"model": "solo", "input": USER, "stream": True}
    headers = {"authorization": f"Bearer {key[1]}"}
    url = gateway.url + "/v1/responses"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=10) as reply:
        raw = b"".join(reply.iter_bytes())
    assert reply.status_code == 200
    assert b'"type":"response.output_text.delta"' in raw  # the content went out first
    last = json.loads(raw.rstrip().rsplit(b"\n\n", 1)[1].split(b"data: ", 1)[1])
    assert last["type"] == "error" and last["code"] == "server_error"
    assert last["sequence_number"] == 5  # follows the provider's own numbering
