"""Rate-limit headers (IETF draft and OpenAI's) and the anonymous per-IP limit, through real Envoy."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.harness import Gateway, Valkey, provider_config
from tests.simulated import SimulatedProviders

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]
ADMIN = "admin-secret-for-rate-tests"
HELLO = [{"role": "user", "content": "Say hello"}]


def models(sim: SimulatedProviders) -> dict[str, Any]:
    return {
        "providers": [
            provider_config("openai", "openai", sim.base_url, "sk-up-1"),
            provider_config("claude", "anthropic", sim.base_url, "sk-up-2"),
        ],
        "models": [
            {"name": "one", "targets": [{"provider": "openai", "model": "gpt-a"}]},
            {
                "name": "two",
                "targets": [
                    {"provider": "openai", "model": "gpt-a"},
                    {"provider": "claude", "model": "claude-a", "priority": 1},
                ],
            },
        ],
    }


@pytest.fixture(scope="module")
def keyed(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    config = {
        **models(sim),
        "auth": {"required": True, "admin_key": ADMIN},
        "cache": {"enabled": True},
    }
    return gateway_factory(config, store_url=valkey.url)


def new_key(gateway: Gateway, **limits: int) -> str:
    created = httpx.post(
        gateway.extproc_admin_url + "/admin/keys",
        json={"name": "rl", "tenant": "t", **limits},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def post(gateway: Gateway, key: str | None, model: str = "one", **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(extra.pop("headers", {}))
    body = {"model": model, "messages": HELLO, **extra}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def seconds_left_in_minute() -> int:
    return 60 - int(time.time()) % 60


def test_headers_count_down_to_a_429_that_still_says_when_it_resets(keyed: Gateway) -> None:
    if seconds_left_in_minute() < 5:  # the key's window is the calendar minute
        time.sleep(seconds_left_in_minute() + 0.2)
    key = new_key(keyed, rpm=3, tpm=100000)
    left = []
    for model in ("one", "two", "one"):  # one target (router stream) and fallback models
        reply = post(keyed, key, model)
        assert reply.status_code == 200, reply.text
        h = reply.headers
        assert h["x-ratelimit-limit-requests"] == "3"
        assert h["ratelimit-policy"] == '"key";q=3;w=60'
        assert h["x-ratelimit-limit-tokens"] == "100000"
        assert int(h["x-ratelimit-remaining-tokens"]) <= 100000
        reset = int(h["x-ratelimit-reset-requests"].rstrip("s"))
        assert 0 < reset <= 60 and abs(reset - seconds_left_in_minute()) <= 2
        left.append(h["x-ratelimit-remaining-requests"])
        assert h["ratelimit"] == f'"key";r={left[-1]};t={reset}'
    assert left == ["2", "1", "0"]
    refused = post(keyed, key)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["ratelimit"].startswith('"key";r=0;t=')
    assert int(refused.headers["retry-after"]) >= 1


def test_the_openai_sdk_reads_them_on_streams_and_cache_hits_too(keyed: Gateway) -> None:
    key = new_key(keyed, rpm=50)
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="one", messages=HELLO, stream=True)
    assert raw.headers["x-ratelimit-limit-requests"] == "50"
    assert "x-ratelimit-limit-tokens" not in raw.headers  # no tpm on this key
    first = int(raw.headers["x-ratelimit-remaining-requests"])
    for _ in raw.parse():
        pass
    hit = post(keyed, key, "one", stream=True)
    assert hit.headers["x-llmux-cache"] == "hit"
    assert int(hit.headers["x-ratelimit-remaining-requests"]) == first - 1
    client.close()


def test_a_key_without_limits_gets_no_headers(keyed: Gateway) -> None:
    reply = post(keyed, new_key(keyed))
    assert reply.status_code == 200
    assert not [h for h in reply.headers if "ratelimit" in h]


@pytest.mark.parametrize("hops", [0, 1])
def test_per_ip_limit_ignores_a_spoofed_forwarded_for_unless_hops_are_trusted(
    hops: int, sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> None:
    if seconds_left_in_minute() < 5:
        time.sleep(seconds_left_in_minute() + 0.2)
    config = {**models(sim), "auth": {"anonymous_rpm": 2, "trusted_hops": hops}}
    gateway = gateway_factory(config, store_url=valkey.url)
    statuses = []
    for n in range(3):
        reply = post(gateway, None, headers={"x-forwarded-for": f"203.0.113.{n}"})
        statuses.append(reply.status_code)
        assert reply.headers["ratelimit-policy"] == '"ip";q=2;w=60'
    if hops == 0:  # the address Envoy saw is the same each time: the spoof changes nothing
        assert statuses == [200, 200, 429]
    else:  # one trusted proxy in front: its x-forwarded-for entry is believed
        assert statuses == [200, 200, 200]
        again = post(gateway, None, headers={"x-forwarded-for": "203.0.113.0"})
        assert again.headers["x-ratelimit-remaining-requests"] == "0"
