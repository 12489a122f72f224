"""Prompt caching across formats, through real Envoy and Valkey with the official SDKs.

Backend -> client: a provider reporting prompt-cache reads (and, for Anthropic, writes)
must show them in every client dialect's own usage fields — OpenAI
`prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens` /
`cache_creation_input_tokens`, Gemini `cachedContentTokenCount`; Ollama has no such
field, its `prompt_eval_count` still counts them — streamed or not, and the key is
charged the cached price. Client -> backend: Anthropic `cache_control` reaches an
Anthropic upstream; OpenAI `prompt_cache_key` reaches OpenAI and is dropped elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import anthropic
import httpx
import ollama
import openai
import pytest
import redis
from google import genai
from google.genai import types as gtypes

from tests.faults.kit import wait_until
from tests.harness import Gateway, Valkey
from tests.integration.conftest import close_client
from tests.integration.test_costs import BY_WIRE, PRICES, cost_config, create_key, key_usage, nano
from tests.simulated import SimulatedProviders

pytestmark = pytest.mark.integration
HELLO = [{"role": "user", "content": "Say hello"}]
CACHED, WRITTEN = 40, 10  # the simulated prompt-cache prefix: tokens read, tokens written
BACKENDS = {"m-oa": "openai", "m-an": "anthropic", "m-gm": "gemini"}


class Seen(NamedTuple):
    """The usage a client saw: all input tokens, cache reads, cache writes (None: no field)."""

    input_tokens: int
    cached: int | None
    written: int | None


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(cost_config(sim), store_url=valkey.url)


def via_openai(url: str, key: str, model: str, stream: bool) -> Seen:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    try:
        if stream:
            chunks = client.chat.completions.create(
                model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
            usage = [c.usage for c in chunks if c.usage is not None][-1]
        else:
            usage = client.chat.completions.create(model=model, messages=HELLO).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return Seen(usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, None)
    finally:
        close_client(client)


def via_anthropic(url: str, key: str, model: str, stream: bool) -> Seen:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    try:
        if stream:
            with client.messages.stream(model=model, max_tokens=50, messages=HELLO) as events:
                usage = events.get_final_message().usage
        else:
            usage = client.messages.create(model=model, max_tokens=50, messages=HELLO).usage
        read, written = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
        return Seen(usage.input_tokens + read + written, read, written)
    finally:
        close_client(client)


def via_gemini(url: str, key: str, model: str, stream: bool) -> Seen:
    client = genai.Client(api_key=key, http_options=gtypes.HttpOptions(base_url=url))
    if stream:
        chunks = list(client.models.generate_content_stream(model=model, contents="Say hello"))
        meta = chunks[-1].usage_metadata
    else:
        meta = client.models.generate_content(model=model, contents="Say hello").usage_metadata
    assert meta is not None and meta.prompt_token_count is not None
    return Seen(meta.prompt_token_count, meta.cached_content_token_count or 0, None)


def via_ollama(url: str, key: str, model: str, stream: bool) -> Seen:
    client = ollama.Client(host=url, headers={"authorization": f"Bearer {key}"})
    if stream:
        last = list(client.chat(model=model, messages=HELLO, stream=True))[-1]
    else:
        last = client.chat(model=model, messages=HELLO)
    assert last.prompt_eval_count is not None
    return Seen(last.prompt_eval_count, None, None)  # Ollama has no cache fields


CLIENTS = {
    "openai": via_openai,
    "anthropic": via_anthropic,
    "gemini": via_gemini,
    "ollama": via_ollama,
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", sorted(BACKENDS))
@pytest.mark.parametrize("dialect", sorted(CLIENTS))
def test_cache_counts_reach_every_dialect_and_the_bill(
    gateway: Gateway,
    sim: SimulatedProviders,
    db: redis.Redis,
    dialect: str,
    model: str,
    stream: bool,
) -> None:
    key_id, secret = create_key(gateway)
    sim.configure(cached_tokens=CACHED, cache_write_tokens=WRITTEN)
    seen = CLIENTS[dialect](gateway.url, secret, model, stream)
    (answered,) = [r for r in sim.requests if r.status == 200]
    reported = answered.usage
    assert reported is not None and reported.cached_tokens == CACHED
    written = reported.cache_write_tokens  # only Anthropic reports writes
    assert written == (WRITTEN if BACKENDS[model] == "anthropic" else 0)
    assert seen.input_tokens == reported.input_tokens  # reads and writes are input too
    if seen.cached is not None:
        assert seen.cached == CACHED
    if seen.written is not None:
        assert seen.written == written
    price = PRICES[BY_WIRE[answered.provider]]

    def booked() -> bool:
        usage = key_usage(db, key_id)
        return (
            usage.get("cached_tokens") == CACHED
            and usage.get("cache_write_tokens", 0) == written
            and usage.get("cost_nano_usd") == nano(reported, price)
        )

    wait_until(booked)


def test_anthropic_message_start_carries_the_cache_counts(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    """Anthropic sends cache reads and writes in message_start: so does the gateway."""
    _, secret = create_key(gateway)
    sim.configure(cached_tokens=CACHED, cache_write_tokens=WRITTEN)
    body = {"model": "m-an", "max_tokens": 50, "messages": HELLO, "stream": True}
    headers = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, headers=headers) as reply:
        raw = reply.read().decode()
    start = json.loads(raw.split("event: message_start\ndata: ", 1)[1].split("\n", 1)[0])
    usage = start["message"]["usage"]
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (
        CACHED,
        WRITTEN,
    )


def test_cache_control_reaches_anthropic_and_is_dropped_elsewhere(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    _, secret = create_key(gateway)
    client = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
    breakpoint_ = {"type": "ephemeral", "ttl": "1h"}
    system = [{"type": "text", "text": "A long manual.", "cache_control": breakpoint_}]
    tools: Any = [
        {
            "name": "lookup",
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    content: Any = [{"type": "text", "text": "Say hello", "cache_control": {"type": "ephemeral"}}]
    for model in ("m-an", "m-oa", "m-gm"):
        client.messages.create(
            model=model,
            max_tokens=50,
            system=system,  # type: ignore[arg-type]
            tools=tools,
            messages=[{"role": "user", "content": content}],
        )
    close_client(client)
    sent = {r.provider: r.body for r in sim.requests}
    assert sent["anthropic"]["system"] == system
    assert sent["anthropic"]["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["anthropic"]["messages"][0]["content"] == content
    # OpenAI and Gemini cache on their own: they get the prompt without the markers.
    assert "cache_control" not in json.dumps(sent["openai"])
    assert "cache_control" not in json.dumps(sent["gemini"])
    assert sent["openai"]["messages"][0]["content"] == "A long manual."


def test_prompt_cache_key_reaches_openai_only(gateway: Gateway, sim: SimulatedProviders) -> None:
    _, secret = create_key(gateway)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    for model in ("m-oa", "m-an", "m-gm"):
        client.chat.completions.create(model=model, messages=HELLO, prompt_cache_key="docs-7")
    close_client(client)
    sent = {r.provider: r.body for r in sim.requests}
    assert sent["openai"]["prompt_cache_key"] == "docs-7"
    assert "docs-7" not in json.dumps(sent["anthropic"]) + json.dumps(sent["gemini"])
