"""Routing decisions, imported directly: plans, headroom, masks, retry-after, preferences."""

from __future__ import annotations

import random

import pytest

from extproc.config.settings import Config, Credential, Model, Provider, Target
from extproc.decisions import routing
from extproc.decisions.routing import CredentialState, credential_tag, target_tag

FRESH = CredentialState(0, 0, 0)
CONFIG = Config(
    providers=[
        Provider(
            name="a",
            type="openai",
            base_url="http://a.test",
            credentials=[Credential(name="k1", rpm=10), Credential(name="k2", tpm=1000)],
        ),
        Provider(name="b", type="anthropic", base_url="http://b.test", api_key="secret"),
    ],
    models=[
        Model(
            name="m",
            targets=[
                Target(provider="a", model="gpt", weight=3),
                Target(provider="b", model="claude", priority=1),
                Target(provider="a", model="gpt-mini", priority=1),
            ],
        )
    ],
)
MODEL = CONFIG.models[0]
PLAN = routing.plan_for(CONFIG, MODEL)


def decide(
    states: list[CredentialState], open_ms: tuple[int, int, int] = (0, 0, 0), seed: int = 0
) -> routing.Decision:
    return routing.decide(PLAN, states, open_ms, 30, random.Random(seed))


def test_a_plan_lists_each_credential_once_and_each_targets_credentials() -> None:
    assert [(ref.provider, ref.credential.name) for ref in PLAN.credentials] == [
        ("a", "k1"),
        ("a", "k2"),
        ("b", "default"),  # a provider with one api_key has one credential
    ]
    assert PLAN.target_credentials == [[0, 1], [2], [0, 1]]
    assert PLAN.target_tags == [target_tag("a", "gpt"), target_tag("b", "claude"), "{t:a/gpt-mini}"]
    assert [ref.tag for ref in PLAN.credentials] == [
        credential_tag("a", "k1"),
        "{c:a:k2}",
        "{c:b:default}",
    ]
    assert [ref.limited for ref in PLAN.credentials] == [True, True, False]


@pytest.mark.parametrize(
    ("index", "state", "room"),
    [
        (2, CredentialState(500, 10**6, 0), 1.0),  # unlimited
        (0, CredentialState(4, 0, 0), 0.6),
        (1, CredentialState(0, 250, 0), 0.75),
        (0, CredentialState(12, 0, 0), 0.0),  # over the limit: never negative
        (2, CredentialState(0, 0, 1), 0.0),  # cooling down
    ],
)
def test_headroom_is_the_fraction_of_quota_left(
    index: int, state: CredentialState, room: float
) -> None:
    assert routing.headroom(PLAN.credentials[index], state) == pytest.approx(room)


def test_every_target_may_serve_when_nothing_is_used() -> None:
    decision = decide([FRESH, FRESH, FRESH])
    assert decision.mask == 0b111
    assert (decision.retry_after_s, decision.rate_limited) == (None, False)
    assert set(decision.preferred) == {"a", "b"}
    assert decision.preferred["b"] == "default"


def test_an_open_breaker_leaves_its_target_out_without_a_retry_after() -> None:
    decision = decide([FRESH, FRESH, FRESH], open_ms=(0, 1500, 0))
    assert decision.mask == 0b101
    assert (decision.retry_after_s, decision.rate_limited) == (None, False)
    everything_open = decide([FRESH, FRESH, FRESH], open_ms=(1, 1, 1))
    assert everything_open.mask == 0
    assert (everything_open.retry_after_s, everything_open.rate_limited) == (None, False)


def test_a_provider_without_quota_leaves_each_of_its_targets_out_whatever_the_tier() -> None:
    spent = [CredentialState(10, 0, 0), CredentialState(0, 1000, 0), FRESH]
    decision = decide(spent)
    assert decision.mask == 0b010  # only b's target, in the second tier
    assert decision.rate_limited is True
    assert decision.retry_after_s is None  # someone may still serve


def test_one_credential_with_quota_keeps_its_providers_targets_in() -> None:
    decision = decide([CredentialState(10, 0, 0), FRESH, CredentialState(0, 0, 900)])
    assert decision.mask == 0b101
    assert decision.preferred["a"] == "k2"


def test_when_nobody_may_serve_retry_after_is_the_soonest_release_in_whole_seconds() -> None:
    states = [CredentialState(0, 0, 7000), CredentialState(0, 1000, 0), CredentialState(0, 0, 2500)]
    decision = decide(states)
    assert decision.mask == 0
    assert decision.rate_limited is True
    assert decision.retry_after_s == 3  # b's cooldown, 2.5 s, rounded up


def test_a_spent_window_retries_when_the_window_ends_and_never_before_one_second() -> None:
    spent = [CredentialState(10, 0, 0), CredentialState(0, 1000, 0), CredentialState(0, 0, 10)]
    assert decide(spent).retry_after_s == 1  # b's 10 ms cooldown, at least 1 s
    no_b = decide([*spent[:2], CredentialState(0, 0, 45_000)])
    assert no_b.retry_after_s == 30  # a's window ends in 30 s, before b's cooldown


def test_breakers_and_quotas_together_answer_rate_limited_with_the_quotas_retry() -> None:
    spent = [CredentialState(10, 0, 0), CredentialState(0, 1000, 0), FRESH]
    decision = decide(spent, open_ms=(0, 900, 0))
    assert decision.mask == 0
    assert (decision.rate_limited, decision.retry_after_s) == (True, 30)


def test_the_credential_with_most_room_is_preferred() -> None:
    assert decide([CredentialState(9, 0, 0), FRESH, FRESH]).preferred["a"] == "k2"
    assert decide([FRESH, CredentialState(0, 500, 0), FRESH]).preferred["a"] == "k1"


def test_ties_are_broken_by_the_rng_it_is_given() -> None:
    choices = [decide([FRESH, FRESH, FRESH], seed=seed).preferred["a"] for seed in range(40)]
    assert set(choices) == {"k1", "k2"}
    again = [decide([FRESH, FRESH, FRESH], seed=seed).preferred["a"] for seed in range(40)]
    assert choices == again  # a seeded RNG decides the same way twice


def test_credential_order_puts_the_preferred_first_then_config_order() -> None:
    creds = [Credential(name=n) for n in ("x", "y", "z")]
    assert [c.name for c in routing.credential_order(creds, "z")] == ["z", "x", "y"]
    assert [c.name for c in routing.credential_order(creds, "x")] == ["x", "y", "z"]
    assert [c.name for c in routing.credential_order(creds, None)] == ["x", "y", "z"]
    assert [c.name for c in routing.credential_order(creds, "gone")] == ["x", "y", "z"]


def test_a_credential_its_provider_called_spent_is_out_until_the_reset_it_named() -> None:
    said_spent = CredentialState(0, 0, 0, exhausted_ms=20_000)
    decision = decide([FRESH, FRESH, said_spent])
    assert decision.mask == 0b101  # b's only credential is out; a's targets stay
    both = decide([said_spent, said_spent, CredentialState(0, 0, 0, exhausted_ms=4_200)])
    assert both.mask == 0 and both.rate_limited and both.retry_after_s == 5
    cooling_longer = CredentialState(0, 0, 9_000, exhausted_ms=3_000)
    assert cooling_longer.waiting_ms == 9_000
