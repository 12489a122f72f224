"""The cost ledger and money budgets through real Envoy, real Valkey and official SDKs.

Prices are the config's; the simulated providers report usage (a prompt-cached prefix
included) as each provider does. The test prices what the providers reported itself,
in integers, and expects Redis to hold exactly that sum, per key, provider and model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from tests.faults.kit import wait_until
from tests.harness import Gateway, Valkey, provider_config
from tests.simulated import Fault, SimulatedProviders
from tests.simulated.scenario import Usage

pytestmark = pytest.mark.integration
ADMIN = "cost-admin-key"
HELLO = [{"role": "user", "content": "Say hello"}]
# USD per 1M tokens; the wire each simulated provider speaks prices its requests.
PRICES: dict[str, dict[str, float]] = {
    "oa/gpt-up": {"input": 0.15, "output": 0.60, "cached_input": 0.075},
    "anthropic/claude-up": {"input": 1.0, "output": 5.0, "cached_input": 0.1, "cache_write": 1.25},
    "gm/gem-up": {"input": 0.3, "output": 2.5, "cached_input": 0.03},
}
BY_WIRE = {"openai": "oa/gpt-up", "anthropic": "anthropic/claude-up", "gemini": "gm/gem-up"}


def nano(usage: Usage, price: dict[str, float]) -> int:
    """The test's own pricing: whole nano-dollars, $1 per 1M tokens = 1000 a token."""

    def rate(name: str) -> int:
        return round(price.get(name, price["input"]) * 1000)

    plain = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
    return (
        plain * rate("input")
        + usage.cached_tokens * rate("cached_input")
        + usage.cache_write_tokens * rate("cache_write")
        + usage.output_tokens * rate("output")
    )


def cost_config(sim: SimulatedProviders, **extra: Any) -> dict[str, Any]:
    return {
        "providers": [
            provider_config("oa", "openai", sim.base_url, "sk-oa"),
            provider_config("an", "anthropic", sim.base_url, "sk-an"),
            provider_config("gm", "gemini", sim.base_url, "g-key"),
        ],
        "models": [
            {"name": "m-oa", "targets": [{"provider": "oa", "model": "gpt-up"}]},
            {"name": "m-an", "targets": [{"provider": "an", "model": "claude-up"}]},
            {"name": "m-gm", "targets": [{"provider": "gm", "model": "gem-up"}]},
            {
                "name": "m-pair",
                "targets": [
                    {"provider": "oa", "model": "gpt-up"},
                    {"provider": "an", "model": "claude-up", "priority": 1},
                ],
            },
        ],
        "auth": {"required": True, "admin_key": ADMIN},
        "pricing": PRICES,
        **extra,
    }


def create_key(gateway: Gateway, **spec: Any) -> tuple[str, str]:
    """(key id, secret) of a new virtual key."""
    created = httpx.post(
        gateway.extproc_admin_url + "/admin/keys",
        json={"name": "cost-test", "tenant": "acme", **spec},
        headers={"authorization": f"Bearer {ADMIN}"},
    ).json()
    return created["id"], created["key"]


def admin_get(gateway: Gateway, path: str) -> Any:
    headers = {"authorization": f"Bearer {ADMIN}"}
    return httpx.get(gateway.extproc_admin_url + path, headers=headers).json()


def key_usage(db: redis.Redis, key_id: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in db.hgetall(f"llmux:{{k:{key_id}}}:usage").items()}


def ledger(db: redis.Redis, kind: str) -> dict[str, int]:
    """Nano-dollars per provider or per model (`kind`: "providers", "models")."""
    return {k.decode(): int(v) for k, v in db.hgetall(f"llmux:cost:{kind}").items()}


def spent(db: redis.Redis, key_id: str) -> int:
    """What the key's money budget periods hold (reserved and settled), all periods."""
    return sum(int(db.get(k) or 0) for k in db.keys(f"llmux:{{k:{key_id}}}:spend:*"))


def metric_total(gateway: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(gateway.extproc_admin_url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(
            part.split("=", 1) for part in line[len(name) + 1 : line.index("}")].split(",")
        )
        if all(found.get(k) == json.dumps(v) for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def reported(sim: SimulatedProviders) -> list[tuple[str, Usage]]:
    """(price key, usage) of every request a simulated provider answered in full."""
    return [
        (BY_WIRE[r.provider], r.usage)
        for r in sim.requests
        if r.status == 200 and r.usage is not None and r.fault is None
    ]


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(cost_config(sim), store_url=valkey.url)


def test_cost_in_redis_is_usage_times_price_exactly(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    key_id, secret = create_key(gateway, budget_usd={"amount": 100, "period": "day"})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    sim.configure(cached_tokens=40, cache_write_tokens=10)
    for model in ("m-oa", "m-an", "m-gm"):
        client.chat.completions.create(model=model, messages=HELLO, max_tokens=50)
        stream = client.chat.completions.create(
            model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    sim.configure(cached_tokens=0, cache_write_tokens=0)
    client.chat.completions.create(model="m-oa", messages=HELLO)  # nothing cached
    # The first target fails, the fallback answers: one charge, on the fallback.
    sim.inject(Fault.error(500), provider="openai")
    answer = client.chat.completions.create(model="m-pair", messages=HELLO)
    assert "anthropic" in (answer.choices[0].message.content or "")

    priced = reported(sim)
    assert len(priced) == 8
    assert {u.cached_tokens for _, u in priced} == {0, 40}
    assert {u.cache_write_tokens for _, u in priced} == {0, 10}  # Anthropic only
    expected = sum(nano(usage, PRICES[key]) for key, usage in priced)
    wait_until(lambda: key_usage(db, key_id).get("cost_nano_usd") == expected)
    tenant = {k.decode(): int(v) for k, v in db.hgetall("llmux:{tenant:acme}:usage").items()}
    assert tenant["cost_nano_usd"] == expected
    by_model: dict[str, int] = {}
    for key, usage in priced:
        model = key.split("/")[1]
        by_model[model] = by_model.get(model, 0) + nano(usage, PRICES[key])
    wait_until(lambda: ledger(db, "models") == by_model)
    assert ledger(db, "providers") == {
        "oa": by_model["gpt-up"],
        "an": by_model["claude-up"],
        "gm": by_model["gem-up"],
    }
    # Every hold was settled to what the answers cost, the failed attempt's included.
    wait_until(lambda: spent(db, key_id) == expected)
    # Prometheus and the admin API say the same in dollars.
    seen = metric_total(gateway, "llmux_cost_usd_total", key=key_id)
    assert seen == pytest.approx(expected / 1e9, rel=1e-9)
    view = admin_get(gateway, f"/admin/keys/{key_id}")
    assert view["usage"]["cost_usd"] == pytest.approx(expected / 1e9)
    assert view["budget_usd_spent"] == pytest.approx(expected / 1e9)
    totals = admin_get(gateway, "/admin/usage/costs")
    assert totals["models"] == {m: pytest.approx(n / 1e9) for m, n in by_model.items()}
    assert sum(totals["providers"].values()) == pytest.approx(expected / 1e9)
    acme = admin_get(gateway, "/admin/usage/tenants/acme")["usage"]
    assert acme["cost_usd"] == pytest.approx(expected / 1e9)


def test_cut_streams_are_charged_what_they_produced_at_the_price(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    sim.configure(chunks=40, chunk_delay=0.05, cached_tokens=20, cache_write_tokens=8)
    # The provider cuts an Anthropic stream after four frames...
    an_id, an_secret = create_key(gateway, budget_usd={"amount": 100, "period": "month"})
    sim.inject(Fault.reset_mid_stream(after_chunks=4), provider="anthropic")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=an_secret, max_retries=0)
    try:
        for _ in client.chat.completions.create(model="m-an", messages=HELLO, stream=True):
            pass
    except openai.APIError:
        pass  # the stream ends with an error event: what the SDK makes of it is not ours
    # ... and a client hangs up an OpenAI stream after its first text.
    oa_id, oa_secret = create_key(gateway, budget_usd={"amount": 100, "period": "month"})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=oa_secret, max_retries=0)
    stream = client.chat.completions.create(
        model="m-oa", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    next(c for c in stream if c.choices and c.choices[0].delta.content)  # some text came
    stream.close()
    for key_id, price in ((an_id, "anthropic/claude-up"), (oa_id, "oa/gpt-up")):
        wait_until(lambda k=key_id: key_usage(db, k).get("requests") == 1, timeout=10)
        usage = key_usage(db, key_id)
        assert 0 < usage["output_tokens"] < 40  # what was produced, not what was planned
        counted = Usage(
            usage["input_tokens"],
            usage["output_tokens"],
            usage.get("cached_tokens", 0),
            usage.get("cache_write_tokens", 0),
        )
        assert usage["cost_nano_usd"] == nano(counted, PRICES[price]) > 0
        wait_until(lambda k=key_id, c=usage["cost_nano_usd"]: spent(db, k) == c)
    # Anthropic says its input, cache reads and writes in message_start: exact before the cut.
    an_sent = next(r.usage for r in sim.requests if r.provider == "anthropic")
    an_usage = key_usage(db, an_id)
    assert an_sent is not None and an_sent.input_tokens == an_usage["input_tokens"]
    assert (an_usage["cached_tokens"], an_usage["cache_write_tokens"]) == (20, 8)
    expected = {
        "an": key_usage(db, an_id)["cost_nano_usd"],
        "oa": key_usage(db, oa_id)["cost_nano_usd"],
    }
    wait_until(lambda: ledger(db, "providers") == expected)


def test_a_spent_money_budget_is_a_429_in_the_client_dialect(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    key_id, secret = create_key(gateway, budget_usd={"amount": 0.000001, "period": "day"})
    client = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
    client.messages.create(model="m-an", max_tokens=5, messages=HELLO)  # spends it all
    wait_until(lambda: key_usage(db, key_id).get("requests") == 1)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model="m-an", max_tokens=5, messages=HELLO)
    assert "this API key's budget of $0.000001 per day is spent" in str(refused.value)
    assert refused.value.response.headers["retry-after"]
    assert len(sim.requests) == 1  # the refusal never reached the provider


# ------------------------------------------------------------------ concurrency


PRICY = {"oa/gpt-up": {"input": 100.0, "output": 100.0}}  # $0.0001 a token
BUDGET_USD = 0.01
MAX_TOKENS = 5


@pytest.fixture(scope="module")
def two_workers(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    config = cost_config(sim, pricing=PRICY, extproc={"workers": 2})
    return gateway_factory(config, store_url=valkey.url)


def test_concurrent_requests_on_two_ext_procs_overshoot_by_at_most_one_estimate(
    two_workers: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    key_id, secret = create_key(two_workers, budget_usd={"amount": BUDGET_USD, "period": "day"})
    body = json.dumps({"model": "m-oa", "messages": HELLO, "max_tokens": MAX_TOKENS}).encode()
    per_token = 100_000  # nano-dollars, input and output alike
    estimate = (len(body) // 4 + MAX_TOKENS) * per_token  # what the gateway reserves
    limit = round(BUDGET_USD * 1e9)
    # Every answer costs exactly its estimate (the prompt's 2 words and a cached prefix
    # make up the estimated input), so when holds settle does not change what is admitted.
    sim.configure(chunks=MAX_TOKENS, cached_tokens=len(body) // 4 - 2)
    sim.inject(Fault.delay(1.0), provider="openai", count=None)  # many in flight at once
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    url = f"{two_workers.url}/v1/chat/completions"
    with (
        httpx.Client(limits=httpx.Limits(max_connections=50), timeout=30) as client,
        ThreadPoolExecutor(50) as pool,
    ):
        answers = list(
            pool.map(lambda _: client.post(url, content=body, headers=headers), range(50))
        )
    statuses = [a.status_code for a in answers]
    admitted = statuses.count(200)
    assert statuses.count(429) + admitted == 50, statuses
    refusal = next(a.json() for a in answers if a.status_code == 429)
    assert refusal["error"]["message"] == "this API key's budget of $0.01 per day is spent"
    assert all(nano(u, PRICY[k]) == estimate for k, u in reported(sim))
    # Only the last request admitted may cross the limit (a non-atomic check would let
    # all 50 through): at most one estimate over.
    assert admitted == -(-limit // estimate), (admitted, estimate)
    actual = admitted * estimate
    assert limit <= actual < limit + estimate
    wait_until(lambda: spent(db, key_id) == actual)
    # Both ext_proc processes served the burst.
    clusters = httpx.get(f"{two_workers.admin_url}/clusters").text
    rows = [line.split("::") for line in clusters.splitlines()]
    served = [int(r[3]) for r in rows if r[0] == "llmux_extproc" and r[2] == "rq_total"]
    assert len(served) == 2 and all(n > 0 for n in served), clusters
