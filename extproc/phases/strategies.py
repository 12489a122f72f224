"""The routing strategies and providers' limits around a request: store reads and writes.

The router phase asks `first_target` which cluster to name (the model's own, or the
ordered variant whose first target the strategy chose: envoy/bootstrap.py). Each
attempt reports through an `AttemptFeedback`: when it went out (least_busy's lease),
what the provider's rate-limit headers said, and when it ended (the lease's release,
least_latency's sample). The choices themselves are decisions/strategy.py's and the
headers' reading decisions/provider_limits.py's; this module only feeds them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from extproc.config.settings import Credential, Model, Provider, Strategy
from extproc.decisions import provider_limits, strategy
from extproc.decisions.pricing import PriceTable, estimate
from extproc.decisions.routing import credential_tag, target_tag
from extproc.decisions.strategy import Choice, TargetLoad
from extproc.envoy.bootstrap import has_ordered_clusters
from extproc.envoy.contract import ordered_cluster_name
from extproc.phases.context import Context, ModelRoute
from extproc.store import StoreError
from extproc.store.protocol import LatencyKind

# Output tokens lowest_cost assumes for a request that sets no max_tokens.


class FirstTarget(NamedTuple):
    cluster: str  # the cluster the router phase names in x-llmux-cluster
    strategy: Strategy
    choice: Choice

    def span_attributes(self) -> dict[str, Any]:
        return {"llmux.route.strategy": self.strategy, "llmux.route.reason": self.choice.reason}


async def first_target(
    context: Context,
    route: ModelRoute,
    mask: int | None,
    *,
    stream: bool,
    tokens: tuple[int, int | None],
    prices: PriceTable,
) -> FirstTarget:
    """The cluster to name and why: the model's strategy over its best eligible tier.

    `mask` is routing's eligible set (None without a store: every target); `tokens`
    the estimated input tokens and the request's max_tokens.
    """
    model = route.model
    if not has_ordered_clusters(model):
        return FirstTarget(route.cluster, model.strategy, Choice(None, "weight"))
    tier = strategy.best_tier(model, (1 << len(model.targets)) - 1 if mask is None else mask)
    readings = await _readings(context, route, model.strategy)
    if readings is None:  # no store to share turns, loads or latencies: Envoy's weights
        choice = Choice(None, "weight")
    else:
        turn, loads = readings
        costs = _costs(route, prices, tokens) if model.strategy == "lowest_cost" else []
        choice = strategy.choose(
            model.strategy,
            model,
            tier,
            turn=turn,
            loads=loads,
            costs=costs,
            stream=stream,
            rng=context.rng,
        )
    if choice.target is None:
        return FirstTarget(route.cluster, model.strategy, choice)
    provider, upstream_model = route.targets[choice.target]
    context.telemetry.metrics.route_choice(
        model.name, model.strategy, provider.name, upstream_model, choice.reason
    )
    return FirstTarget(ordered_cluster_name(route.cluster, choice.target), model.strategy, choice)


async def _readings(
    context: Context, route: ModelRoute, chosen_by: Strategy
) -> tuple[int, Sequence[TargetLoad]] | None:
    """The shared turn and per-target loads the strategy reads; None when unavailable."""
    if not (strategy.needs_turn(chosen_by) or strategy.needs_loads(chosen_by)):
        return 0, []
    store = context.store
    if store is None:
        return None
    try:
        if strategy.needs_turn(chosen_by):
            return await store.next_turn(strategy.model_tag(route.model.name)), []
        return 0, await store.target_loads(route.plan.target_tags)
    except StoreError as exc:
        context.store_failed(exc)  # routing goes on either way: the choice is an optimisation
        return None


def _costs(
    route: ModelRoute, prices: PriceTable, tokens: tuple[int, int | None]
) -> list[float | None]:
    """Each target's estimated cost (pricing's estimate); None for an unpriced target."""
    input_tokens, max_output = tokens
    costs: list[float | None] = []
    for provider, model in route.targets:
        rates = prices.lookup(provider, model)
        costs.append(None if rates is None else estimate(input_tokens, max_output, rates))
    return costs


class AttemptFeedback:
    """What one attempt tells the shared state: its lease, the provider's limits, its time."""

    __slots__ = ("attempt_id", "context", "leased", "model", "provider", "target")

    def __init__(
        self,
        context: Context,
        model: Model,
        provider: Provider,
        upstream_model: str,
        attempt_id: str,
    ) -> None:
        self.context = context
        self.model = model
        self.provider = provider
        self.target = target_tag(provider.name, upstream_model)
        self.attempt_id = attempt_id
        self.leased = False

    async def dispatched(self) -> None:
        """least_busy: count the attempt in flight before it goes out.

        Awaited, not in the background, so the release at its end can never overtake it.
        """
        store = self.context.store
        if store is None or self.model.strategy != "least_busy":
            return
        lease_ms = int(self.context.config.timeouts.request_s * 1000)
        try:
            await store.busy_start(self.target, self.attempt_id, lease_ms)
        except StoreError as exc:
            self.context.store_failed(exc)
            return
        self.leased = True

    def answered(self, headers: Mapping[str, str], credential: Credential | None) -> None:
        """Keep what the provider's rate-limit headers say of the credential used, when low."""
        store = self.context.store
        if store is None or credential is None:
            return
        limits = provider_limits.read(self.provider.type, headers, self.context.clock())
        if limits is None or not limits.near_exhaustion():
            return
        if limits.exhausted_ms() > 0:
            self.context.telemetry.metrics.provider_limit_exhausted(self.provider.name)
        tag = credential_tag(self.provider.name, credential.name)
        self.context.background(store.note_provider_limits(tag, limits))

    def ended(self, *, succeeded: bool, stream: bool, started: float, first_token: float) -> None:
        """Release the lease; least_latency: one sample (TTFT for streams, else total)."""
        store = self.context.store
        if store is None:
            return
        if self.leased:
            self.leased = False
            self.context.background(store.busy_end(self.target, self.attempt_id))
        if not succeeded or self.model.strategy != "least_latency":
            return
        if stream and not first_token:
            return  # a stream without a token says nothing of its time to first token
        ms = ((first_token if stream else time.perf_counter()) - started) * 1000
        kind: LatencyKind = "ttft" if stream else "total"
        self.context.background(store.record_latency(self.target, kind, ms))
