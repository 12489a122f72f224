"""Which eligible target of a model serves first: the model's routing strategy.

Eligibility (quota, cooldown, breaker, the provider's own limits) is routing.py's;
this module orders what is eligible. It looks only at the best (lowest-numbered)
priority tier that has an eligible target and picks one of it by the model's
`strategy`; the other targets stay the fallbacks in their order (README, Routing).
The shared readings it needs (a round-robin turn, in-flight counts, latency
averages, estimated costs) come in as values; no I/O, the RNG is passed in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal, NamedTuple

from extproc.config.settings import Model, Strategy

# Share of least_latency choices that go to another eligible target at random, so a
# target that was slow is measured again and wins back its traffic once it recovers.
EXPLORATION = 0.1
# Weight of the newest sample in a latency average: about the last five count.
EWMA_ALPHA = 0.3

# Why a target was chosen: a small fixed set (a metric label).
Reason = Literal[
    "weight",  # weighted: Envoy picks by weight inside the tier
    "only",  # one eligible target in the tier
    "turn",  # round_robin: the shared counter's turn
    "fewest_in_flight",  # least_busy
    "fastest",  # least_latency: the lowest average
    "unmeasured",  # least_latency: a target without samples is tried first
    "explore",  # least_latency: the exploration share
    "cheapest",  # lowest_cost
    "unpriced",  # lowest_cost without a price for any target: first by weight
]


def model_tag(model: str) -> str:
    """The name a model's round-robin counter is kept under (braces: a Redis hash tag)."""
    return f"{{m:{model}}}"


class TargetLoad(NamedTuple):
    """What the store knows of one target for the strategies that read it."""

    in_flight: int  # attempts dispatched and not finished (leaked ones expire)
    ttft_ms: float | None  # average time to first token of streams; None: no sample
    total_ms: float | None  # average total time of whole responses; None: no sample


class Choice(NamedTuple):
    target: int | None  # index into model.targets; None: Envoy chooses (weighted)
    reason: Reason


def best_tier(model: Model, mask: int) -> list[int]:
    """Indexes of the eligible targets in the best priority tier that has any."""
    eligible = [i for i in range(len(model.targets)) if mask >> i & 1]
    if not eligible:
        return []
    best = min(model.targets[i].priority for i in eligible)
    return [i for i in eligible if model.targets[i].priority == best]


def needs_turn(strategy: Strategy) -> bool:
    return strategy == "round_robin"


def needs_loads(strategy: Strategy) -> bool:
    return strategy in ("least_busy", "least_latency")


def choose(
    strategy: Strategy,
    model: Model,
    tier: Sequence[int],
    *,
    turn: int = 0,
    loads: Sequence[TargetLoad] = (),
    costs: Sequence[float | None] = (),
    stream: bool = False,
    rng: random.Random,
) -> Choice:
    """The target of `tier` to try first; `loads` and `costs` are per target of the model."""
    if strategy == "weighted" or not tier:
        return Choice(None, "weight")
    if len(tier) == 1:
        return Choice(tier[0], "only")
    if strategy == "round_robin":
        return Choice(tier[turn % len(tier)], "turn")
    if strategy == "least_busy":
        fewest = min(loads[i].in_flight for i in tier)
        return Choice(
            rng.choice([i for i in tier if loads[i].in_flight == fewest]), "fewest_in_flight"
        )
    if strategy == "least_latency":
        return fastest(tier, loads, stream, rng)
    return cheapest(model, tier, costs)


def fastest(
    tier: Sequence[int], loads: Sequence[TargetLoad], stream: bool, rng: random.Random
) -> Choice:
    """The lowest average (TTFT for streams, total time otherwise), exploring sometimes."""
    averages = {i: loads[i].ttft_ms if stream else loads[i].total_ms for i in tier}
    unmeasured = [i for i, ms in averages.items() if ms is None]
    if unmeasured:
        return Choice(rng.choice(unmeasured), "unmeasured")
    best = min(tier, key=lambda i: (averages[i], i))
    if rng.random() < EXPLORATION:
        return Choice(rng.choice([i for i in tier if i != best]), "explore")
    return Choice(best, "fastest")


def cheapest(model: Model, tier: Sequence[int], costs: Sequence[float | None]) -> Choice:
    """The lowest estimated cost; unpriced targets only when none is priced."""
    priced = [i for i in tier if i < len(costs) and costs[i] is not None]
    if not priced:
        return Choice(max(tier, key=lambda i: (model.targets[i].weight, -i)), "unpriced")
    return Choice(min(priced, key=lambda i: (costs[i], -model.targets[i].weight, i)), "cheapest")


def ewma(previous: float | None, sample: float, alpha: float = EWMA_ALPHA) -> float:
    """The next latency average (the store's Lua script does the same arithmetic)."""
    return sample if previous is None else previous + alpha * (sample - previous)
