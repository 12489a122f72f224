"""Routing, fallback, credentials and quotas through real Envoy and real Valkey."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import redis

from extproc.run.children import free_port
from tests.harness import Gateway, Valkey, provider_config
from tests.simulated import Fault, SimulatedProviders

pytestmark = pytest.mark.integration
HELLO = [{"role": "user", "content": "Say hello"}]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def inside_one_window() -> None:
    """Quota windows are calendar minutes: start a limit test well inside one."""
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.1)


@pytest.fixture
def db(valkey: Valkey) -> Iterator[redis.Redis]:
    inside_one_window()
    client = valkey.client()
    client.flushdb()
    yield client
    client.close()


def routing_config(sim: SimulatedProviders) -> dict[str, Any]:
    dead = f"http://127.0.0.1:{free_port()}"
    return {
        "providers": [
            provider_config("primary", "openai", sim.base_url, "sk-primary"),
            provider_config("backup", "anthropic", sim.base_url, "sk-backup"),
            provider_config("dead", "openai", dead, "sk-dead"),
            {
                "name": "pool",
                "type": "openai",
                "base_url": sim.base_url,
                "credentials": [
                    {"name": "team-a", "api_key": "sk-team-a", "rpm": 3},
                    {"name": "team-b", "api_key": "sk-team-b", "rpm": 3},
                ],
            },
            {
                "name": "solo",
                "type": "openai",
                "base_url": sim.base_url,
                "credentials": [
                    {"name": "only", "api_key": "sk-only", "rpm": 3, "tpm": 100000},
                ],
            },
        ],
        "models": [
            # Envoy's outlier detection remembers a failing host of a cluster for a while:
            # one model (so one cluster) per fallback test.
            *(
                {
                    "name": f"fallback-{kind}-{mode}",
                    "targets": [
                        {
                            "provider": "dead" if kind == "refused" else "primary",
                            "model": "gpt-primary",
                            "priority": 0,
                        },
                        {"provider": "backup", "model": "claude-backup", "priority": 1},
                    ],
                }
                for kind in ("refused", "429", "500", "timeout")
                for mode in ("buffered", "stream")
            ),
            {
                "name": "fallback",
                "targets": [
                    {"provider": "primary", "model": "gpt-primary", "priority": 0},
                    {"provider": "backup", "model": "claude-backup", "priority": 1},
                ],
            },
            {
                "name": "weighted",
                "targets": [
                    {"provider": "primary", "model": "w-three", "weight": 3},
                    {"provider": "backup", "model": "w-one", "weight": 1},
                ],
            },
            {"name": "pooled", "targets": [{"provider": "pool", "model": "gpt-pool"}]},
            {"name": "dead-single", "targets": [{"provider": "dead", "model": "gpt-dead"}]},
            {"name": "limited", "targets": [{"provider": "solo", "model": "gpt-solo"}]},
        ],
        "timeouts": {"connect_ms": 1000, "attempt_s": 1, "idle_s": 5},
        "routing": {"cooldown_s": 30, "breaker": {"failures": 1, "window_s": 30, "open_s": 30}},
    }


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(routing_config(sim), store_url=valkey.url)


def chat(gateway: Gateway, model: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": HELLO, "stream": stream}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=10)
    return response


FAULTS = {
    "429": lambda: Fault.error(429, retry_after=20),
    "500": lambda: Fault.error(500),
    "timeout": lambda: Fault.delay(3),
}


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
@pytest.mark.parametrize("kind", ["refused", "429", "500", "timeout"])
def test_failure_falls_back_to_another_provider_then_skips_the_failed_target(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis, kind: str, stream: bool
) -> None:
    model = f"fallback-{kind}-{'stream' if stream else 'buffered'}"
    if kind != "refused":
        sim.inject(FAULTS[kind](), provider="openai")
    response = chat(gateway, model, stream=stream)
    assert response.status_code == 200, response.text
    assert response.headers["x-llmux-provider"] == "backup"
    assert response.headers["x-llmux-attempts"] == "2"
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]")
        assert "claude-backup" in sim.last_request("anthropic").body["model"]
    else:
        assert response.json()["choices"][0]["message"]["content"]
    first_tries = len(sim.requests_for("openai"))
    if kind != "refused":  # a refused connection is remembered by Envoy's outlier detection
        # The failure is recorded in Redis in the background; then the next request skips it.
        wait_until(lambda: bool(db.keys("llmux:*:open") or db.keys("llmux:*:cool")))
    again = chat(gateway, model, stream=stream)
    assert again.status_code == 200
    assert again.headers["x-llmux-provider"] == "backup"
    assert again.headers["x-llmux-attempts"] == "1"
    assert len(sim.requests_for("openai")) == first_tries


def test_retry_after_of_a_429_sets_the_cooldown(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    sim.inject(Fault.error(429, retry_after=20), provider="openai")
    assert chat(gateway, "fallback").status_code == 200
    wait_until(lambda: bool(db.keys("llmux:*:cool")))
    (key,) = db.keys("llmux:*:cool")
    assert b"primary:default" in key
    assert 15_000 < db.pttl(key) <= 20_000


def test_a_dead_single_target_fails_fast_in_the_openai_sdk(
    gateway: Gateway, db: redis.Redis
) -> None:
    """The open breaker is the gateway's own guess, not a provider's Retry-After: the
    SDK's retries (which honour retry-after up to 60 s) must not sleep on it."""
    started = time.monotonic()
    with (
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=2) as sdk,
        pytest.raises(openai.APIStatusError) as caught,
    ):
        sdk.chat.completions.create(model="dead-single", messages=HELLO)
    assert caught.value.status_code == 503
    assert time.monotonic() - started < 10
    wait_until(lambda: bool(db.keys("llmux:*:open")))
    refused = chat(gateway, "dead-single")
    assert refused.status_code == 503 and "failing" in refused.text
    assert "retry-after" not in refused.headers


def test_rpm_limit_moves_to_the_second_credential_then_429s(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    keys = []
    for _ in range(6):
        assert chat(gateway, "pooled").status_code == 200
        keys.append(sim.last_request("openai").headers["authorization"])
    assert Counter(keys) == {"Bearer sk-team-a": 3, "Bearer sk-team-b": 3}
    refused = chat(gateway, "pooled")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert len(sim.requests_for("openai")) == 6


def test_two_extproc_processes_share_one_limit(
    sim: SimulatedProviders,
    valkey: Valkey,
    db: redis.Redis,
    gateway_factory: Callable[..., Gateway],
    gateway: Gateway,
) -> None:
    other = gateway_factory(routing_config(sim), store_url=valkey.url)
    statuses = [chat(g, "limited").status_code for g in (gateway, other, gateway, other, gateway)]
    assert statuses == [200, 200, 200, 429, 429]


def test_tpm_is_charged_from_real_streamed_usage(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    for stream in (True, False, True):
        assert chat(gateway, "limited", stream=stream).status_code == 200
    reported = sum(r.usage.total_tokens for r in sim.requests_for("openai") if r.usage)
    assert reported > 0

    def charged() -> int:
        return sum(int(db.get(k) or 0) for k in db.keys("llmux:{c:solo:only}:tpm:*"))

    wait_until(lambda: charged() == reported)


def test_weighted_shares_over_10000_selections(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    body = {"model": "weighted", "messages": HELLO}

    def send(n: int) -> list[str]:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            return [
                client.post("/v1/chat/completions", json=body).headers["x-llmux-provider"]
                for _ in range(n)
            ]

    with ThreadPoolExecutor(8) as pool:
        served = [p for batch in pool.map(send, [1250] * 8) for p in batch]
    shares = Counter(served)
    assert sum(shares.values()) == 10_000
    assert abs(shares["primary"] / 10_000 - 0.75) <= 0.02, shares
    assert abs(shares["backup"] / 10_000 - 0.25) <= 0.02, shares


def test_admin_resets_a_credentials_counters(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> None:
    config = routing_config(sim)
    config["auth"] = {"admin_key": "reset-admin"}
    gateway = gateway_factory(config, store_url=valkey.url)
    valkey.client().flushdb()
    inside_one_window()
    assert [chat(gateway, "limited").status_code for _ in range(4)] == [200, 200, 200, 429]
    admin = {"authorization": "Bearer reset-admin"}
    status = httpx.get(gateway.extproc_admin_url + "/admin/quota", headers=admin).json()
    solo = next(c for c in status["credentials"] if c["provider"] == "solo")
    assert solo["rpm"] == {"limit": 3, "used": 3, "remaining": 0}
    reset = httpx.post(
        gateway.extproc_admin_url + "/admin/quota/reset",
        headers=admin,
        json={"provider": "solo", "credential": "only"},
    )
    assert reset.status_code == 200 and reset.json()["reset"] >= 1
    assert chat(gateway, "limited").status_code == 200
    missing = httpx.post(
        gateway.extproc_admin_url + "/admin/quota/reset", headers=admin, json={"provider": "nope"}
    )
    assert missing.status_code == 404
