"""The strategies' store reads and writes around requests (phases/strategies.py), on the fake store.

The same store methods run against a real Valkey in test_store_contract.py; Envoy's side
(the ordered clusters) is in test_envoy_contract.py and, end to end, tests/integration.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from extproc.config import settings
from extproc.config.settings import Provider
from extproc.decisions.routing import credential_tag
from extproc.envoy.contract import ordered_cluster_name
from extproc.phases.context import Context, ModelRoute
from extproc.phases.strategies import AttemptFeedback, FirstTarget, first_target
from tests.fakes.clock import FakeClock
from tests.fakes.memory_store import MemoryStore

CONFIG = """
providers:
  - {name: fast, type: openai, base_url: "http://127.0.0.1:9", api_key: K}
  - {name: slow, type: anthropic, base_url: "http://127.0.0.1:10", api_key: K}
  - {name: spare, type: openai, base_url: "http://127.0.0.1:11", api_key: K}
models:
"""
TARGETS = """
    targets:
      - {provider: fast, model: a}
      - {provider: slow, model: b}
      - {provider: spare, model: c, priority: 1}
"""


class Rates(NamedTuple):
    input: int
    output: int


class Prices:
    def lookup(self, provider: Provider, model: str) -> Rates | None:
        return {"a": Rates(10, 40), "b": Rates(1, 4)}.get(model)


def context_for(strategy: str, store: MemoryStore | None = None) -> tuple[Context, ModelRoute]:
    text = CONFIG + f"  - name: chat\n    strategy: {strategy}\n" + TARGETS
    config = settings.parse(text, env={})
    context = Context(config, store, rng=random.Random(5), clock=FakeClock())
    return context, context.models["chat"]


def run(case: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(case())


async def choose(
    context: Context, route: ModelRoute, mask: int | None = 0b111, stream: bool = False
) -> FirstTarget:
    return await first_target(
        context, route, mask, stream=stream, tokens=(100, None), prices=Prices()
    )


def test_weighted_names_the_models_own_cluster() -> None:
    async def case() -> None:
        context, route = context_for("weighted", MemoryStore(FakeClock()))
        first = await choose(context, route)
        assert first.cluster == route.cluster and first.choice.target is None
        assert first.span_attributes() == {
            "llmux.route.strategy": "weighted",
            "llmux.route.reason": "weight",
        }

    run(case)


def test_round_robin_names_each_first_target_of_the_best_tier_in_turn() -> None:
    async def case() -> None:
        context, route = context_for("round_robin", MemoryStore(FakeClock()))
        firsts = [await choose(context, route) for _ in range(4)]
        assert [f.cluster for f in firsts] == [
            ordered_cluster_name(route.cluster, i) for i in (0, 1, 0, 1)
        ]
        assert {f.choice.reason for f in firsts} == {"turn"}
        only_spare = await choose(context, route, mask=0b100)
        assert only_spare.cluster == ordered_cluster_name(route.cluster, 2)
        assert only_spare.choice.reason == "only"
        metrics = context.telemetry.metrics.registry
        labels = {
            "model": "chat",
            "strategy": "round_robin",
            "provider": "fast",
            "upstream_model": "a",
            "reason": "turn",
        }
        assert metrics.get_sample_value("llmux_route_choices_total", labels) == 2

    run(case)


def test_without_a_store_shared_strategies_leave_the_choice_to_envoy() -> None:
    async def case() -> None:
        for name in ("round_robin", "least_busy", "least_latency"):
            context, route = context_for(name)
            first = await choose(context, route, mask=None)
            assert (first.cluster, first.choice.reason) == (route.cluster, "weight")
        context, route = context_for("lowest_cost")  # prices need no store
        first = await choose(context, route, mask=None)
        assert first.cluster == ordered_cluster_name(route.cluster, 1)

    run(case)


def test_a_failing_store_is_counted_and_the_choice_is_envoys() -> None:
    async def case() -> None:
        store = MemoryStore(FakeClock())
        store.failing = True
        context, route = context_for("least_busy", store)
        first = await choose(context, route)
        assert first.cluster == route.cluster
        errors = context.telemetry.metrics.registry.get_sample_value("llmux_store_errors_total")
        assert errors == 1

    run(case)


def test_least_busy_steers_away_from_leased_attempts_until_they_end() -> None:
    async def case() -> None:
        store = MemoryStore(FakeClock())
        context, route = context_for("least_busy", store)
        provider, upstream = route.targets[0]
        leases = [
            AttemptFeedback(context, route.model, provider, upstream, f"r{i}") for i in range(3)
        ]
        for lease in leases:
            await lease.dispatched()
        picks = Counter([(await choose(context, route)).choice.target for _ in range(20)])
        assert picks == {1: 20}
        for lease in leases:
            lease.ended(succeeded=True, stream=False, started=0.0, first_token=0.0)
        await context.drain()
        picks = Counter([(await choose(context, route)).choice.target for _ in range(40)])
        assert set(picks) == {0, 1}  # idle again: ties at random

    run(case)


def test_least_latency_follows_the_samples_attempts_report() -> None:
    async def case() -> None:
        store = MemoryStore(FakeClock())
        context, route = context_for("least_latency", store)
        first = await choose(context, route, stream=True)
        assert first.choice.reason == "unmeasured"
        for index, ttft in ((0, 0.5), (1, 0.05)):
            provider, upstream = route.targets[index]
            feedback = AttemptFeedback(context, route.model, provider, upstream, "r")
            feedback.ended(succeeded=True, stream=True, started=1.0, first_token=1.0 + ttft)
        await context.drain()
        picks = Counter([(await choose(context, route, stream=True)).choice for _ in range(200)])
        assert picks.most_common(1)[0][0] == (1, "fastest")
        assert 5 < sum(n for c, n in picks.items() if c.reason == "explore") < 40
        whole = await choose(context, route, stream=False)  # no totals measured yet
        assert whole.choice.reason == "unmeasured"

    run(case)


def test_lowest_cost_picks_the_cheapest_eligible_target() -> None:
    async def case() -> None:
        context, route = context_for("lowest_cost", MemoryStore(FakeClock()))
        first = await choose(context, route)
        assert (first.choice.target, first.choice.reason) == (1, "cheapest")
        out_of_quota = await choose(context, route, mask=0b101)
        assert (out_of_quota.choice.target, out_of_quota.choice.reason) == (0, "only")

    run(case)


def test_exhausting_headers_make_the_credential_wait_and_are_counted() -> None:
    async def case() -> None:
        store = MemoryStore(FakeClock())
        context, route = context_for("weighted", store)
        provider, upstream = route.targets[0]
        credential = provider.all_credentials[0]
        feedback = AttemptFeedback(context, route.model, provider, upstream, "r")
        headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}
        feedback.answered(headers, credential)
        feedback.answered({"content-type": "application/json"}, credential)  # says nothing
        await context.drain()
        tag = credential_tag(provider.name, credential.name)
        (state,) = (await store.request_state([tag], [], None)).credentials
        assert state.exhausted_ms == 20_000
        metrics = context.telemetry.metrics.registry
        exhausted = {"provider": "fast"}
        assert metrics.get_sample_value("llmux_provider_limit_exhausted_total", exhausted) == 1

    run(case)
