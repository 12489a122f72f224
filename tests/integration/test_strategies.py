"""Routing strategies and providers' own limits through real Envoy, Valkey and the simulators.

The simulated providers are slowed down per model (`model_delays`) or limited per model
(`rate_limits`: a window of N requests, 429 beyond, and the provider's rate-limit
headers on every answer); which target served comes back in `x-llmux-model`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from extproc.decisions.routing import credential_tag, target_tag
from tests.harness import Gateway, Valkey, provider_config
from tests.simulated import Fault, SimulatedProviders

pytestmark = pytest.mark.integration
HELLO = [{"role": "user", "content": "Say hello"}]


def targets(*models: str, provider: str = "sim-openai") -> list[dict[str, Any]]:
    return [{"provider": provider, "model": m} for m in models]


def strategies_config(sim: SimulatedProviders) -> dict[str, Any]:
    return {
        "providers": [
            provider_config("sim-openai", "openai", sim.base_url, "sk-openai"),
            provider_config("sim-anthropic", "anthropic", sim.base_url, "sk-anthropic"),
            # Providers' limits are kept per credential (an API key): one provider each.
            provider_config("lim-openai", "openai", sim.base_url, "sk-lim-openai"),
            provider_config("lim-anthropic", "anthropic", sim.base_url, "sk-lim-anthropic"),
        ],
        "models": [
            {
                "name": "rr",
                "strategy": "round_robin",
                "targets": [
                    *targets("rr-a", "rr-b"),
                    *targets("rr-c", provider="sim-anthropic"),
                ],
            },
            {"name": "busy", "strategy": "least_busy", "targets": targets("busy-a", "busy-b")},
            # The same target as busy's first, alone: its streams count against busy-a.
            {"name": "hold", "strategy": "least_busy", "targets": targets("busy-a")},
            {"name": "fast", "strategy": "least_latency", "targets": targets("ll-f", "ll-s")},
            {
                "name": "limited",
                "strategy": "round_robin",
                "targets": [
                    *targets("lim-20s", provider="lim-openai"),
                    *targets("free"),
                    *targets("lim-short", provider="lim-anthropic"),
                ],
            },
        ],
        "timeouts": {"connect_ms": 1000, "attempt_s": 5, "idle_s": 10},
    }


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(strategies_config(sim), store_url=valkey.url)


@pytest.fixture
def http() -> Any:
    with httpx.Client(timeout=30) as client:
        yield client


def served_by(http: httpx.Client, gateway: Gateway, model: str, **extra: Any) -> str:
    """The upstream model that answered one request (200 expected)."""
    body = {"model": model, "messages": HELLO, **extra}
    response = http.post(f"{gateway.url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-llmux-model"]


def test_round_robin_spreads_300_requests_evenly(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    def some(count: int) -> list[str]:
        with httpx.Client(timeout=30) as client:
            return [served_by(client, gateway, "rr") for _ in range(count)]

    with ThreadPoolExecutor(4) as pool:
        counts = Counter(name for names in pool.map(some, [75] * 4) for name in names)
    assert set(counts) == {"rr-a", "rr-b", "rr-c"}
    assert all(99 <= n <= 101 for n in counts.values()), counts
    assert Counter(r.body["model"] for r in sim.requests) == counts  # first attempts only


def test_least_busy_steers_away_from_a_target_holding_20_slow_streams(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis, http: httpx.Client
) -> None:
    sim.configure(model_delays={"busy-a": 2.0})
    holds = [
        threading.Thread(
            target=served_by,
            args=(httpx.Client(timeout=30), gateway, "hold"),
            kwargs={"stream": True},
        )
        for _ in range(20)
    ]
    for thread in holds:
        thread.start()
    deadline = time.monotonic() + 10
    while sum(r.body["model"] == "busy-a" for r in sim.requests) < 20:
        assert time.monotonic() < deadline, "the 20 streams did not reach the provider"
        time.sleep(0.02)
    sim.configure(model_delays={})  # new requests to busy-a would be fast: only load steers
    during = Counter(served_by(http, gateway, "busy") for _ in range(20))
    for thread in holds:
        thread.join()
    after = Counter(served_by(http, gateway, "busy") for _ in range(40))
    assert during == {"busy-b": 20}
    assert after["busy-a"] >= 8 and after["busy-b"] >= 8, after  # idle again: shared
    settled(lambda: in_flight(db, "busy-a") == 0)


def in_flight(db: redis.Redis, model: str) -> int:
    return int(db.zcard(f"llmux:{target_tag('sim-openai', model)}:busy"))


def test_in_flight_counts_end_when_the_client_leaves_or_the_attempt_fails(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    sim.configure(model_delays={"busy-a": 3.0})

    def leave_early() -> None:
        with httpx.Client(timeout=0.5) as client, contextlib.suppress(httpx.TimeoutException):
            served_by(client, gateway, "hold", stream=True)

    leaving = [threading.Thread(target=leave_early) for _ in range(3)]
    for thread in leaving:
        thread.start()
    for thread in leaving:
        thread.join()
    deadline = time.monotonic() + 2  # well before the provider would have answered
    while in_flight(db, "busy-a"):
        assert time.monotonic() < deadline, "a cancelled attempt kept its count"
        time.sleep(0.02)
    sim.configure(model_delays={})
    sim.inject(Fault.error(500), count=1)
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{gateway.url}/v1/chat/completions", json={"model": "hold", "messages": HELLO}
        )
    assert response.status_code == 500
    settled(lambda: in_flight(db, "busy-a") == 0)  # released in the background


def settled(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not settled in time"
        time.sleep(0.02)


def test_least_latency_moves_to_a_5x_faster_target_and_back_when_the_other_recovers(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis, http: httpx.Client
) -> None:
    sim.configure(model_delays={"ll-f": 0.02, "ll-s": 0.1})
    first = [served_by(http, gateway, "fast") for _ in range(100)]
    assert first.count("ll-f") >= 80, Counter(first)
    # ll-s recovers and is now the faster one: only the exploration share can tell.
    sim.configure(model_delays={"ll-f": 0.02, "ll-s": 0.002})
    # About six of its samples bring its average down (EWMA_ALPHA 0.3): ~60 requests at
    # a 10 % exploration share; 150 leave room for bad luck before the last 50 count.
    second = [served_by(http, gateway, "fast") for _ in range(200)]
    assert second[-50:].count("ll-s") >= 40, Counter(second[-50:])


def test_a_provider_that_says_it_is_spent_is_skipped_until_its_reset_without_a_429(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis, http: httpx.Client
) -> None:
    sim.configure(
        rate_limits={
            "lim-20s": {"requests": 1, "reset_s": 20},
            "lim-short": {"requests": 1, "reset_s": 1.5},
        }
    )
    served = [served_by(http, gateway, "limited") for _ in range(12)]
    assert served.count("lim-20s") == 1 and served.count("lim-short") == 1, served

    def reset_of(provider: str) -> float:
        live = db.hgetall(f"llmux:{credential_tag(provider, 'default')}:live")
        assert live[b"req"] == b"0"
        return int(live[b"req_until"]) / 1000

    assert 17 < reset_of("lim-openai") - time.time() <= 20
    short_reset = reset_of("lim-anthropic")  # Anthropic names it in whole seconds
    deadline = time.time() + 5
    while True:
        sent = time.time()
        if served_by(http, gateway, "limited") == "lim-short":
            break
        assert sent < deadline, "lim-short was not used again after its reset"
        time.sleep(0.05)
    assert sent >= short_reset - 0.01  # not before the reset it named
    assert [r.status for r in sim.requests if r.status != 200] == []  # never a 429
    assert sum(r.body["model"] == "lim-20s" for r in sim.requests) == 1


def test_lowest_cost_picks_the_cheaper_target_and_falls_back_when_it_is_out_of_quota(
    sim: SimulatedProviders,
    valkey: Valkey,
    db: redis.Redis,
    gateway_factory: Callable[..., Gateway],
    http: httpx.Client,
) -> None:
    config = {
        "providers": [
            provider_config("pricey", "openai", sim.base_url, "sk-pricey"),
            {
                "name": "cheap",
                "type": "anthropic",
                "base_url": sim.base_url,
                "credentials": [{"name": "only", "api_key": "sk-cheap", "rpm": 3}],
            },
        ],
        "models": [
            {
                "name": "thrifty",
                "strategy": "lowest_cost",
                "targets": [
                    {"provider": "pricey", "model": "big-model"},
                    {"provider": "cheap", "model": "small-model"},
                ],
            }
        ],
        "pricing": {
            "pricey/big-model": {"input": 10.0, "output": 30.0},
            "cheap/small-model": {"input": 0.1, "output": 0.4},
        },
    }
    gateway = gateway_factory(config, store_url=valkey.url)
    served = [served_by(http, gateway, "thrifty") for _ in range(5)]
    assert served == ["small-model"] * 3 + ["big-model"] * 2


def test_a_strategy_set_by_a_reload_takes_over_without_a_failed_request(
    sim: SimulatedProviders,
    valkey: Valkey,
    db: redis.Redis,
    gateway_factory: Callable[..., Gateway],
    http: httpx.Client,
) -> None:
    config = {
        "providers": [provider_config("sim-openai", "openai", sim.base_url, "sk-openai")],
        "models": [
            {
                "name": "later",
                "targets": [
                    {"provider": "sim-openai", "model": "w-a", "weight": 50},
                    {"provider": "sim-openai", "model": "w-b", "weight": 1},
                ],
            }
        ],
    }
    gateway = gateway_factory(config, store_url=valkey.url)
    config["models"][0]["strategy"] = "round_robin"  # Envoy gets two ordered clusters more
    gateway.rewrite_config(config)
    deadline = time.monotonic() + 15
    seen: list[str] = []
    while seen[-4:] not in (["w-a", "w-b"] * 2, ["w-b", "w-a"] * 2):  # weights 50:1 no more
        assert time.monotonic() < deadline, seen[-20:]
        seen.append(served_by(http, gateway, "later"))  # every one a 200 meanwhile
