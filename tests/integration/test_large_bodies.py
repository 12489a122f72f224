"""Large prompts through real Envoy on both ext_proc transports.

A request body travels to the ext_proc as one gRPC message, and its rewritten form
comes back as another: a 9 MiB prompt is a 9 MiB message each way, spread over
hundreds of HTTP/2 DATA frames and several flow-control windows.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.harness import BOTH_TRANSPORTS, Gateway, provider_config
from tests.simulated import SimulatedProviders

TRANSPORTS = BOTH_TRANSPORTS
pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def gateway(sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(
        {
            "providers": [
                provider_config("openai", "openai", sim.base_url, "sk-openai"),
                provider_config("anthropic", "anthropic", sim.base_url, "sk-anthropic"),
            ],
            "models": [
                {"name": "gpt", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                {
                    "name": "claude",
                    "targets": [{"provider": "anthropic", "model": "claude-3-5-haiku-latest"}],
                },
            ],
            "limits": {"max_body_bytes": 16 * MiB},
        }
    )


def prompt(size: int) -> str:
    # Not one repeated byte: a body that compresses to nothing would hide a framing bug.
    words = [f"w{i % 9973}" for i in range(size // 5)]
    return " ".join(words)[:size]


@pytest.mark.parametrize("model, provider", [("gpt", "openai"), ("claude", "anthropic")])
@pytest.mark.parametrize("size", [64 * 1024 - 7, 3 * MiB + 1, 9 * MiB])
def test_a_large_prompt_reaches_the_provider_whole(
    gateway: Gateway, sim: SimulatedProviders, model: str, provider: str, size: int
) -> None:
    text = prompt(size)
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["role"] == "assistant"
    upstream = sim.last_request(provider).body
    content = upstream["messages"][-1]["content"]
    received = content if isinstance(content, str) else content[0]["text"]
    assert received == text


def test_a_body_over_the_limit_is_413_and_the_gateway_stays_up(gateway: Gateway) -> None:
    over = prompt(17 * MiB)
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": over}]},
        timeout=60,
    )
    assert response.status_code == 413
    assert response.json()["error"]
    small = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert small.status_code == 200
