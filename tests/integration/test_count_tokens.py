"""`POST /v1/messages/count_tokens` through real Envoy, real Valkey and the Anthropic SDK.

Anthropic and Gemini targets count on the provider's own endpoint (the simulators
count the words of the prompt, as their chat replies report input tokens); the
others get the gateway's estimate (the body's bytes / 4), flagged in the
`x-llmux-token-count` header. Virtual keys apply as to /v1/messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest

from tests.harness import Gateway, Valkey, provider_config
from tests.integration.conftest import close_client
from tests.integration.test_costs import metric_total
from tests.simulated import Fault, SimulatedProviders

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]
ADMIN = "count-admin-key"
UPSTREAM = {"an": "sk-ant-upstream-0001", "gm": "g-upstream-0002"}
HEADER = "x-llmux-token-count"
SYSTEM = "You answer in one short sentence."
MESSAGES: list[Any] = [{"role": "user", "content": "How many words are in this prompt?"}]
WORDS = len(SYSTEM.split()) + len(MESSAGES[0]["content"].split())
TOOL = {
    "name": "lookup",
    "description": "Look a word up",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
}


def single(name: str, provider: str, model: str) -> dict[str, Any]:
    return {"name": name, "targets": [{"provider": provider, "model": model}]}


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    url = sim.base_url
    return gateway_factory(
        {
            "providers": [
                provider_config("an", "anthropic", url, UPSTREAM["an"]),
                provider_config("gm", "gemini", url, UPSTREAM["gm"]),
                provider_config("oa", "openai", url, "sk-oa"),
                provider_config("az", "azure_openai", url, "az-key"),
                provider_config("ol", "ollama", url, "ol-key"),
            ],
            "models": [
                single("m-an", "an", "claude-up"),
                single("m-gm", "gm", "gem-up"),
                single("m-oa", "oa", "gpt-up"),
                single("m-az", "az", "dep-up"),
                single("m-ol", "ol", "llama-up"),
                {  # two tiers: the count goes to the best tier's first target only
                    "name": "m-tiers",
                    "targets": [
                        {"provider": "oa", "model": "gpt-up", "priority": 1},
                        {"provider": "gm", "model": "gem-up", "priority": 0},
                        {"provider": "an", "model": "claude-up", "priority": 0},
                    ],
                },
                {
                    "name": "m-openai-first",
                    "targets": [
                        {"provider": "oa", "model": "gpt-up"},
                        {"provider": "an", "model": "claude-up", "priority": 1},
                    ],
                },
            ],
            "auth": {"required": True, "admin_key": ADMIN},
        },
        store_url=valkey.url,
    )


@pytest.fixture
def key(gateway: Gateway) -> str:
    return new_key(gateway)


def new_key(gateway: Gateway, **spec: Any) -> str:
    response = httpx.post(
        gateway.extproc_admin_url + "/admin/keys",
        json={"name": "count-test", **spec},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 201, response.text
    secret: str = response.json()["key"]
    return secret


@pytest.fixture
def claude(gateway: Gateway, key: str) -> Any:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    yield client
    close_client(client)


def count(gateway: Gateway, key: str | None, body: Any) -> httpx.Response:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"} if key else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        gateway.url + "/v1/messages/count_tokens", content=content, headers=headers, timeout=10
    )


def test_the_sdk_counts_on_anthropic_s_own_endpoint(
    claude: Any, sim: SimulatedProviders, key: str
) -> None:
    raw = claude.messages.with_raw_response.count_tokens(
        model="m-an", system=SYSTEM, messages=MESSAGES, tools=[TOOL]
    )
    assert raw.headers[HEADER] == "provider"
    assert raw.parse().input_tokens == WORDS
    (upstream,) = sim.requests_for("anthropic")
    assert upstream.path == "/v1/messages/count_tokens"
    assert upstream.headers["x-api-key"] == UPSTREAM["an"]  # the gateway's key, not the client's
    assert key not in json.dumps(upstream.to_json())
    assert upstream.body["model"] == "claude-up" and upstream.body["tools"][0]["name"] == "lookup"
    assert "max_tokens" not in upstream.body


def test_cache_control_reaches_anthropic_s_count_endpoint(
    claude: Any, sim: SimulatedProviders
) -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    claude.messages.count_tokens(model="m-an", system=system, messages=MESSAGES)
    (upstream,) = sim.requests_for("anthropic")
    assert upstream.body["system"] == system


def test_gemini_counts_the_whole_request_on_count_tokens(
    claude: Any, sim: SimulatedProviders
) -> None:
    raw = claude.messages.with_raw_response.count_tokens(
        model="m-gm", system=SYSTEM, messages=MESSAGES
    )
    assert raw.headers[HEADER] == "provider"
    assert raw.parse().input_tokens == WORDS  # the system instruction counted too
    (upstream,) = sim.requests_for("gemini")
    assert upstream.path == "/v1beta/models/gem-up:countTokens"
    assert upstream.headers["x-goog-api-key"] == UPSTREAM["gm"]
    assert upstream.body["generateContentRequest"]["model"] == "models/gem-up"


@pytest.mark.parametrize("model", ["m-oa", "m-az", "m-ol", "m-openai-first"])
def test_providers_without_a_count_endpoint_get_the_flagged_estimate(
    gateway: Gateway, sim: SimulatedProviders, key: str, model: str
) -> None:
    body = json.dumps({"model": model, "system": SYSTEM, "messages": MESSAGES}).encode()
    response = count(gateway, key, body)
    assert response.status_code == 200, response.text
    assert response.headers[HEADER] == "estimate"
    assert response.json() == {"input_tokens": len(body) // 4}
    assert sim.requests == []  # answered by the gateway


def test_a_tiered_model_counts_on_its_best_tier_s_first_target(
    claude: Any, sim: SimulatedProviders
) -> None:
    # Three targets: the cluster runs the count in the upstream (per-attempt) phase.
    assert claude.messages.count_tokens(model="m-tiers", messages=MESSAGES).input_tokens > 0
    assert [r.path for r in sim.requests] == ["/v1beta/models/gem-up:countTokens"]


def test_a_provider_error_reaches_the_sdk_in_anthropic_s_shape(
    claude: Any, sim: SimulatedProviders
) -> None:
    sim.inject(Fault.error(429, retry_after=3), provider="anthropic")
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.count_tokens(model="m-an", messages=MESSAGES)
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    sim.inject(Fault.error(500), provider="gemini")
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.count_tokens(model="m-gm", messages=MESSAGES)


def test_an_unreadable_count_is_a_502_and_every_count_is_a_request_in_metrics(
    gateway: Gateway, claude: Any, sim: SimulatedProviders
) -> None:
    def requests(status: str) -> float:
        labels = {"provider": "an", "model": "m-an", "status": status}
        return metric_total(gateway, "llmux_requests_total", **labels)

    before = requests("200"), requests("502")
    claude.messages.count_tokens(model="m-an", messages=MESSAGES)
    sim.inject(Fault.malformed_json(), provider="anthropic")
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.messages.count_tokens(model="m-an", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert (requests("200"), requests("502")) == (before[0] + 1, before[1] + 1)


def test_a_count_is_authenticated_and_validated_like_a_message(
    gateway: Gateway, sim: SimulatedProviders, key: str
) -> None:
    body = {"model": "m-an", "messages": MESSAGES}
    missing = count(gateway, None, body)
    assert missing.status_code == 401 and missing.json()["type"] == "error"
    narrow = new_key(gateway, models=["m-oa"])
    refused = count(gateway, narrow, body)
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    unknown = count(gateway, key, {"model": "nope", "messages": MESSAGES})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    bad = count(gateway, key, {"model": "m-an"})
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
    assert count(gateway, key, b"{not json").status_code == 400
    assert sim.requests == []
