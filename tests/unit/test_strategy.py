"""Strategies order the eligible targets of the best tier; eligibility stays routing's."""

from __future__ import annotations

import random
from collections import Counter

from extproc.config.settings import Model, Target
from extproc.decisions import strategy
from extproc.decisions.strategy import Choice, TargetLoad

TIERED = Model(
    name="chat",
    targets=[
        Target(provider="a", model="m1", priority=0),
        Target(provider="b", model="m2", priority=0, weight=3),
        Target(provider="c", model="m3", priority=1),
        Target(provider="d", model="m4", priority=0),
    ],
)
IDLE = TargetLoad(0, None, None)


def test_the_best_tier_is_the_lowest_priority_with_an_eligible_target() -> None:
    assert strategy.best_tier(TIERED, 0b1111) == [0, 1, 3]
    assert strategy.best_tier(TIERED, 0b0110) == [1]
    assert strategy.best_tier(TIERED, 0b0100) == [2]  # the first tier is all out
    assert strategy.best_tier(TIERED, 0) == []


def test_weighted_leaves_the_choice_to_envoy_and_one_target_is_the_only_choice() -> None:
    rng = random.Random(1)
    assert strategy.choose("weighted", TIERED, [0, 1, 3], rng=rng) == Choice(None, "weight")
    assert strategy.choose("least_busy", TIERED, [2], rng=rng) == Choice(2, "only")


def test_round_robin_takes_turns_over_the_tier() -> None:
    rng = random.Random(1)
    picks = [
        strategy.choose("round_robin", TIERED, [0, 1, 3], turn=n, rng=rng).target
        for n in range(300)
    ]
    assert picks[:4] == [0, 1, 3, 0]
    assert set(Counter(picks).values()) == {100}


def test_least_busy_picks_the_fewest_in_flight_and_breaks_ties_at_random() -> None:
    loads = [TargetLoad(20, None, None), TargetLoad(2, None, None), IDLE, TargetLoad(2, None, None)]
    rng = random.Random(7)
    picks = Counter(
        strategy.choose("least_busy", TIERED, [0, 1, 3], loads=loads, rng=rng) for _ in range(200)
    )
    assert set(picks) == {Choice(1, "fewest_in_flight"), Choice(3, "fewest_in_flight")}
    assert min(picks.values()) > 60


def test_least_latency_tries_the_unmeasured_then_the_fastest_and_explores_a_little() -> None:
    rng = random.Random(3)
    loads = [TargetLoad(0, 50.0, 500.0), TargetLoad(0, None, 100.0), IDLE, IDLE]
    choice = strategy.choose("least_latency", TIERED, [0, 1], loads=loads, stream=True, rng=rng)
    assert choice == Choice(1, "unmeasured")
    picks = Counter(
        strategy.choose("least_latency", TIERED, [0, 1], loads=loads, rng=rng) for _ in range(1000)
    )
    assert picks[Choice(1, "fastest")] > 850  # whole responses: 100 ms beats 500 ms
    assert 50 < picks[Choice(0, "explore")] < 150
    loads[1] = TargetLoad(0, 200.0, 100.0)
    streamed = strategy.choose("least_latency", TIERED, [0, 1], loads=loads, stream=True, rng=rng)
    assert streamed.target == 0 or streamed.reason == "explore"  # streams: TTFT 50 beats 200


def test_lowest_cost_picks_the_cheapest_priced_target() -> None:
    rng = random.Random(1)
    costs = [3.0, 1.0, 0.1, None]
    assert strategy.choose("lowest_cost", TIERED, [0, 1, 3], costs=costs, rng=rng) == Choice(
        1, "cheapest"
    )
    unpriced = strategy.choose("lowest_cost", TIERED, [0, 3], costs=[None] * 4, rng=rng)
    assert unpriced == Choice(0, "unpriced")  # equal weights: config order
    heavy = strategy.choose("lowest_cost", TIERED, [0, 1], costs=[], rng=rng)
    assert heavy == Choice(1, "unpriced")  # no prices at all: the heaviest weight


def test_the_moving_average_weighs_the_newest_sample_by_alpha() -> None:
    assert strategy.ewma(None, 80.0) == 80.0
    assert strategy.ewma(100.0, 200.0) == 100.0 + strategy.EWMA_ALPHA * 100.0
    average = 500.0
    for _ in range(10):
        average = strategy.ewma(average, 100.0)
    assert average < 115  # ten fast samples nearly forget a slow past
