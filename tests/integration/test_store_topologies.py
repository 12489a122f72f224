"""The gateway on a real Valkey Cluster and a real Sentinel set: routing quotas, the cache
and virtual keys, each through real Envoy and the real ext_proc.

A representative subset of test_routing, test_cache and test_auth, in the default suite;
`LLMUX_TEST_STORE=cluster` (or `sentinel`) runs those whole modules on that topology.
On the Cluster, the quota's slot moves to another primary under the requests (a
resharding, then MOVED), and cache entries must spread over the primaries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.harness import Gateway, provider_config
from tests.integration.test_auth import admin, chat, new_key, wait_until
from tests.simulated import SimulatedProviders
from tests.topologies import StoreUnderTest, ValkeyCluster, start_store

pytestmark = pytest.mark.integration
ADMIN = "admin-secret-for-tests"  # what test_auth's admin() sends


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreUnderTest]:
    started = start_store(request.param, tmp_path_factory.mktemp(request.param))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, store: StoreUnderTest, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    solo = provider_config("solo", "openai", sim.base_url, "unused")
    del solo["api_key"]
    solo["credentials"] = [{"name": "k", "api_key": "sk-solo", "rpm": 3}]
    config: dict[str, Any] = {
        "providers": [provider_config("openai", "openai", sim.base_url, "sk-up"), solo],
        "models": [
            {"name": "open", "targets": [{"provider": "openai", "model": "gpt-a"}]},
            {"name": "limited", "targets": [{"provider": "solo", "model": "gpt-solo"}]},
        ],
        "auth": {"required": True, "admin_key": ADMIN},
        "cache": {"enabled": True},
    }
    return gateway_factory(config, store_url=store.url)


@pytest.fixture
def db(store: StoreUnderTest) -> Iterator[redis.Redis]:
    client = store.client()
    client.flushdb()
    yield client  # type: ignore[misc]
    client.close()


def ask(gateway: Gateway, secret: str, model: str, prompt: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": model, "messages": [{"role": "user", "content": prompt}]},
        timeout=10,
    )


def test_rpm_quota_counts_across_a_slot_moving_to_another_primary(
    gateway: Gateway, store: StoreUnderTest, db: redis.Redis
) -> None:
    """rpm 3. While the slot moves, its multi-key scripts meet TRYAGAIN (Redis refuses
    them mid-migration): that request is served per `store.on_error` (open) and may go
    uncounted. Once moved, MOVED is followed and counting goes on where it was."""
    secret = new_key(gateway)["key"]
    before = [ask(gateway, secret, "limited", f"quota {i}").status_code for i in range(2)]
    assert before == [200, 200]
    during: list[int] = []

    def midway() -> None:
        during.append(ask(gateway, secret, "limited", "quota midway").status_code)

    if isinstance(store, ValkeyCluster):
        source, target = store.move_slot("llmux:{c:solo:k}:rpm:0", midway=midway)
        assert store.owner("llmux:{c:solo:k}:rpm:0") is target is not source
    else:
        midway()
    after = [ask(gateway, secret, "limited", f"quota after {i}").status_code for i in range(2)]
    assert during == [200], during
    (rpm_key,) = db.keys("llmux:{c:solo:k}:rpm:*")
    assert int(db.get(rpm_key) or 0) == 3  # the two before, then whichever came next
    assert after in ([200, 429], [429, 429]), after


def test_cache_hits_and_its_entries_spread_over_the_primaries(
    gateway: Gateway, store: StoreUnderTest, db: redis.Redis
) -> None:
    secret = new_key(gateway)["key"]
    prompts = [f"cache me {i}" for i in range(12)]
    first = [ask(gateway, secret, "open", p).headers["x-llmux-cache"] for p in prompts]
    assert first == ["miss"] * len(prompts)

    def all_hit() -> bool:
        again = [ask(gateway, secret, "open", p).headers["x-llmux-cache"] for p in prompts]
        return again == ["hit"] * len(prompts)

    wait_until(all_hit)
    if isinstance(store, ValkeyCluster):
        holders = [
            node.port for node in store.primaries().values() if node.client().keys("llmux:cache:*")
        ]
        assert len(holders) >= 2, holders  # 12 entries on one of 3 primaries: 3^-11


def test_key_usage_is_counted_and_revocation_applies(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    created = new_key(gateway, tenant="acme", budget={"tokens": 10**6, "period": "day"})
    for i in range(3):
        assert chat(gateway, created["key"], temperature=i / 10).status_code == 200
    reported = sum(r.usage.total_tokens for r in sim.requests if r.usage is not None)
    path = f"/admin/keys/{created['id']}"

    def used() -> int:
        usage = admin(gateway, "GET", path).json()["usage"]
        return int(usage.get("input_tokens", 0) + usage.get("output_tokens", 0))

    wait_until(lambda: used() == reported)
    assert admin(gateway, "DELETE", path).json()["revoked"] is True
    assert chat(gateway, created["key"]).status_code == 401
