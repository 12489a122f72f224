"""The simple prompt API (POST /api/smart) through real Envoy, to every provider type."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.harness import Gateway, Valkey, provider_config
from tests.simulated import SimulatedProviders

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(
        {
            "providers": [
                provider_config("openai", "openai", sim.base_url, "sk-openai"),
                provider_config("claude", "anthropic", sim.base_url, "sk-claude"),
            ],
            "models": [
                {"name": "default", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                {"name": "gpt", "targets": [{"provider": "openai", "model": "gpt-4o"}]},
                {"name": "haiku", "targets": [{"provider": "claude", "model": "claude-haiku"}]},
                {
                    "name": "pair",
                    "targets": [
                        {"provider": "claude", "model": "claude-haiku"},
                        {"provider": "openai", "model": "gpt-4o"},
                    ],
                },
            ],
        }
    )


@pytest.fixture(scope="module")
def cached_gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    """No model named `default`; the cache on."""
    return gateway_factory(
        {
            "providers": [provider_config("openai", "openai", sim.base_url, "sk-openai")],
            "models": [{"name": "cached", "targets": [{"provider": "openai", "model": "gpt-x"}]}],
            "cache": {"enabled": True, "ttl_seconds": 60},
        },
        store_url=valkey.url,
    )


def smart(gateway: Gateway, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{gateway.url}/api/smart", json=body, timeout=10, **kwargs)


def sse_events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e.strip()]


def stream_text(gateway: Gateway, body: dict[str, Any]) -> tuple[str, list[bytes]]:
    with httpx.stream(
        "POST", f"{gateway.url}/api/smart", json={**body, "stream": True}, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes())
    events = sse_events(raw)
    assert events[-1] == b"data: [DONE]"
    deltas = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert all(set(d) == {"text"} for d in deltas), deltas
    return "".join(d["text"] for d in deltas), events


def test_answer_names_text_model_provider_usage(gateway: Gateway, sim: SimulatedProviders) -> None:
    response = smart(gateway, {"prompt": "Say hello", "model": "gpt", "system": "Be brief"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    upstream = sim.last_request("openai")
    assert upstream.body["model"] == "gpt-4o"
    assert not upstream.body.get("stream")
    assert upstream.body["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Say hello"},
    ]
    assert upstream.usage is not None
    assert set(body) == {"text", "model", "provider", "usage", "cached"}
    assert body["text"]
    assert body["model"] == "gpt-4o"
    assert body["provider"] == "openai"
    assert body["usage"] == {
        "input_tokens": upstream.usage.input_tokens,
        "output_tokens": upstream.usage.output_tokens,
    }
    assert body["cached"] is False


def test_stream_sends_text_deltas_ending_with_done(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    whole = smart(gateway, {"prompt": "Tell a story", "model": "gpt"}).json()["text"]
    text, events = stream_text(gateway, {"prompt": "Tell a story", "model": "gpt"})
    assert sim.last_request("openai").body["stream"] is True
    assert len(events) > 2
    assert text == whole


def test_default_model_serves_when_none_is_named(gateway: Gateway, sim: SimulatedProviders) -> None:
    response = smart(gateway, {"prompt": "Say hello"})
    assert response.status_code == 200, response.text
    assert sim.last_request("openai").body["model"] == "gpt-4o-mini"
    assert response.json()["model"] == "gpt-4o-mini"


@pytest.mark.parametrize(
    "body",
    [{"model": "gpt"}, {"model": "gpt", "prompt": ""}, {"prompt": 42}],
    ids=["missing", "empty", "not-a-string"],
)
def test_bad_prompt_is_a_400_with_a_json_error(
    gateway: Gateway, sim: SimulatedProviders, body: dict[str, Any]
) -> None:
    response = smart(gateway, body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert "prompt" in error["message"]
    assert error["type"] == "invalid_request"
    assert sim.requests == []


def test_not_json_is_a_400(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/api/smart", content=b"{nope", timeout=10)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


def test_unknown_model_is_a_404(gateway: Gateway) -> None:
    response = smart(gateway, {"prompt": "hi", "model": "nope"})
    assert response.status_code == 404
    assert "nope" in response.json()["error"]["message"]


def test_anthropic_backend_is_translated(gateway: Gateway, sim: SimulatedProviders) -> None:
    response = smart(gateway, {"prompt": "Say hello", "model": "haiku", "system": "Be brief"})
    assert response.status_code == 200, response.text
    upstream = sim.last_request("anthropic")
    assert upstream.path == "/v1/messages"
    assert upstream.body["system"] == "Be brief"
    assert upstream.body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert upstream.usage is not None
    body = response.json()
    assert body["text"] and body["provider"] == "claude" and body["cached"] is False
    assert body["usage"] == {
        "input_tokens": upstream.usage.input_tokens,
        "output_tokens": upstream.usage.output_tokens,
    }
    text, _ = stream_text(gateway, {"prompt": "Say hello", "model": "haiku", "system": "Be brief"})
    assert text == body["text"]


def test_multi_target_model_names_the_provider_that_served(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    response = smart(gateway, {"prompt": "Say hello", "model": "pair"})
    assert response.status_code == 200, response.text
    served = sim.requests[-1].provider
    assert response.json()["provider"] == {"anthropic": "claude", "openai": "openai"}[served]
    text, _ = stream_text(gateway, {"prompt": "Say hello again", "model": "pair"})
    assert text


def test_no_default_model_is_a_clear_400(cached_gateway: Gateway, sim: SimulatedProviders) -> None:
    response = smart(cached_gateway, {"prompt": "Say hello"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "no model named `default`" in error["message"]
    assert sim.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
def test_second_identical_request_is_answered_from_the_cache(
    cached_gateway: Gateway, valkey: Valkey, sim: SimulatedProviders, stream: bool
) -> None:
    client = valkey.client()
    client.flushdb()
    client.close()
    ask = {"prompt": f"Cache me ({stream})", "model": "cached"}
    first = smart(cached_gateway, ask).json()
    assert first["cached"] is False and first["provider"] == "openai"
    calls = len(sim.requests)
    if stream:
        text, _ = stream_text(cached_gateway, ask)
        assert text == first["text"]
    else:
        second = smart(cached_gateway, ask)
        assert second.status_code == 200
        assert second.headers["x-llmux-cache"] == "hit"
        body = second.json()
        assert body["cached"] is True
        assert body["provider"] == "openai"
        assert {k: body[k] for k in ("text", "model", "usage")} == {
            k: first[k] for k in ("text", "model", "usage")
        }
    assert len(sim.requests) == calls
