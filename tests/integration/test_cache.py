"""The response cache through real Envoy and real Valkey, in every client dialect."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.harness import Gateway, Valkey, provider_config
from tests.simulated import Fault, SimulatedProviders

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(
        {
            "providers": [provider_config("openai", "openai", sim.base_url, "sk-up")],
            "models": [{"name": "cached", "targets": [{"provider": "openai", "model": "gpt-x"}]}],
            "cache": {"enabled": True, "ttl_seconds": 60, "max_entry_bytes": 5000},
            "auth": {"admin_key": "cache-admin"},
        },
        store_url=valkey.url,
    )


@pytest.fixture(autouse=True)
def empty_cache(valkey: Valkey) -> Iterator[redis.Redis]:
    client = valkey.client()
    client.flushdb()
    yield client
    client.close()


def ask(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# (path, body builder) per client dialect; every body asks the same question.
def dialect_request(
    dialect: str, prompt: str, stream: bool, **extra: Any
) -> tuple[str, dict[str, Any]]:
    if dialect == "openai":
        return "/v1/chat/completions", {
            "model": "cached",
            "messages": ask(prompt),
            "stream": stream,
            "max_tokens": 50,
            **extra,
        }
    if dialect == "anthropic":
        return "/v1/messages", {
            "model": "cached",
            "messages": ask(prompt),
            "stream": stream,
            "max_tokens": 50,
            **extra,
        }
    if dialect == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        body = {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"maxOutputTokens": 50, **extra},
        }
        return f"/v1beta/models/cached:{method}", body
    return "/api/chat", {
        "model": "cached",
        "messages": ask(prompt),
        "stream": stream,
        "options": {"num_predict": 50, **extra},
    }


def send(
    gateway: Gateway,
    dialect: str,
    prompt: str,
    stream: bool,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    path, body = dialect_request(dialect, prompt, stream, **extra)
    return httpx.post(gateway.url + path, json=body, headers=headers or {}, timeout=10)


DIALECTS = ["openai", "anthropic", "gemini", "ollama"]
TERMINATORS = {
    "openai": b"data: [DONE]",
    "anthropic": b"event: message_stop",
    "gemini": b'"finishReason"',
    "ollama": b'"done":true',
}


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_second_identical_request_is_a_hit(
    gateway: Gateway, sim: SimulatedProviders, dialect: str, stream: bool
) -> None:
    first = send(gateway, dialect, f"hello {dialect}", stream)
    assert first.status_code == 200, first.text
    assert first.headers["x-llmux-cache"] == "miss"
    upstream_calls = len(sim.requests)
    second = send(gateway, dialect, f"hello {dialect}", stream)
    assert second.status_code == 200
    assert second.headers["x-llmux-cache"] == "hit"
    assert len(sim.requests) == upstream_calls
    if stream:
        assert TERMINATORS[dialect] in second.content
    else:
        assert second.content == first.content


def test_a_stream_replays_an_answer_first_given_without_streaming(
    request: pytest.FixtureRequest, gateway: Gateway, sim: SimulatedProviders
) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    request.addfinalizer(client.close)
    first = client.chat.completions.create(model="cached", messages=ask("replay me"), max_tokens=50)
    calls = len(sim.requests)
    chunks = list(
        client.chat.completions.create(
            model="cached",
            messages=ask("replay me"),
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(sim.requests) == calls
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage is not None and first.usage is not None
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens


def test_the_same_question_in_another_dialect_hits(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    assert send(gateway, "openai", "cross dialect", False).headers["x-llmux-cache"] == "miss"
    calls = len(sim.requests)
    replay = send(gateway, "anthropic", "cross dialect", True)
    assert replay.headers["x-llmux-cache"] == "hit"
    assert b"event: message_stop" in replay.content
    assert len(sim.requests) == calls


@pytest.mark.parametrize(
    "change",
    [{"temperature": 0.3}, {"top_p": 0.5}, {"max_tokens": 51}, {"stop": ["x"]}],
    ids=lambda c: next(iter(c)),
)
def test_a_different_parameter_misses(gateway: Gateway, change: dict[str, Any]) -> None:
    assert send(gateway, "openai", "params", False).status_code == 200
    again = send(gateway, "openai", "params", False, **change)
    assert again.headers["x-llmux-cache"] == "miss"


def test_key_order_and_whitespace_do_not_matter(gateway: Gateway) -> None:
    body_a = b'{"model":"cached","messages":[{"role":"user","content":"order"}],"temperature":0.2}'
    body_b = b'{ "temperature": 0.2,\n  "messages": [ {"content": "order", "role": "user"} ], "model": "cached" }'
    headers = {"content-type": "application/json"}
    assert (
        httpx.post(gateway.url + "/v1/chat/completions", content=body_a, headers=headers).headers[
            "x-llmux-cache"
        ]
        == "miss"
    )
    assert (
        httpx.post(gateway.url + "/v1/chat/completions", content=body_b, headers=headers).headers[
            "x-llmux-cache"
        ]
        == "hit"
    )


def test_upstream_errors_are_not_cached(gateway: Gateway, sim: SimulatedProviders) -> None:
    sim.inject(Fault.error(500), provider="openai")
    assert send(gateway, "openai", "error once", False).status_code == 500
    retry = send(gateway, "openai", "error once", False)
    assert retry.status_code == 200
    assert retry.headers["x-llmux-cache"] == "miss"


def test_a_stream_cut_midway_is_not_cached(gateway: Gateway, sim: SimulatedProviders) -> None:
    sim.inject(Fault.reset_mid_stream(after_chunks=2), provider="openai")
    # Envoy resets the client's stream when the upstream's is reset after headers; if the
    # reset reached it as an end of stream instead, the client saw an in-band error.
    try:
        cut = send(gateway, "openai", "cut me", True)
        assert b'"error"' in cut.content
    except httpx.RemoteProtocolError:
        pass
    again = send(gateway, "openai", "cut me", True)
    assert again.headers["x-llmux-cache"] == "miss"


def test_cache_control_directives(gateway: Gateway, sim: SimulatedProviders) -> None:
    stored = send(gateway, "openai", "directives", False, headers={"cache-control": "no-store"})
    assert stored.headers["x-llmux-cache"] == "miss"
    assert send(gateway, "openai", "directives", False).headers["x-llmux-cache"] == "miss"
    assert (
        send(gateway, "openai", "directives", False, headers={"cache-control": "no-cache"}).headers[
            "x-llmux-cache"
        ]
        == "bypass"
    )
    assert send(gateway, "openai", "directives", False).headers["x-llmux-cache"] == "hit"


def test_oversized_answers_are_not_stored(gateway: Gateway, sim: SimulatedProviders) -> None:
    sim.configure(chunks=10000)  # ~10 kB of text, above max_entry_bytes
    first = send(gateway, "openai", "big", False)
    assert first.status_code == 200, first.text
    assert send(gateway, "openai", "big", False).headers["x-llmux-cache"] == "miss"


def test_admin_stats_and_clear(gateway: Gateway) -> None:
    for _ in range(3):
        send(gateway, "openai", "stats", False)
    admin = {"authorization": "Bearer cache-admin"}
    stats = httpx.get(gateway.extproc_admin_url + "/admin/cache/stats", headers=admin).json()
    assert stats["entries"] == 1 and stats["bytes"] > 0
    assert stats["hits"] == 2 and stats["misses"] == 1
    assert stats["hit_ratio"] == pytest.approx(2 / 3, abs=1e-3)
    cleared = httpx.post(
        gateway.extproc_admin_url + "/admin/cache/clear", json={"model": "cached"}, headers=admin
    )
    assert cleared.json()["removed"] == 1
    assert send(gateway, "openai", "stats", False).headers["x-llmux-cache"] == "miss"


def test_cache_admin_is_not_on_the_public_listener(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/admin/cache/stats").status_code == 404
