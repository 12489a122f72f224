"""The price table and the cost of a usage, in whole nano-dollars.

Costs are integers so the ledger adds up exactly; cached and cache-write tokens are
priced apart from plain input; the config's entries win over the bundled table.
"""

from __future__ import annotations

import pytest

from extproc import ir
from extproc.config.settings import Price, Provider, parse, price_units
from extproc.decisions import pricing
from extproc.decisions.default_prices import DEFAULT_PRICES


def provider(name: str, kind: str = "openai") -> Provider:
    return Provider(name=name, type=kind, base_url="http://x")  # type: ignore[arg-type]


MINI = pricing.Rates(input=150, output=600, cached_input=75, cache_write=150)


@pytest.mark.parametrize(
    ("usd", "units"),
    [(0.15, 150), (0.075, 75), (1.25, 1250), (0.005, 5), (0.0, 0), (75.0, 75_000), (0.0375, None)],
)
def test_a_price_per_million_is_whole_nano_dollars_per_token(usd: float, units: int | None) -> None:
    assert price_units(usd) == units


def test_every_bundled_price_is_representable() -> None:
    for key, price in DEFAULT_PRICES.items():
        rates = pricing.rates_of(price)
        assert rates.cached_input <= rates.input <= rates.cache_write
        assert "/" in key


def test_cost_prices_cached_and_cache_write_tokens_apart() -> None:
    rates = pricing.Rates(input=1000, output=5000, cached_input=100, cache_write=1250)
    usage = ir.Usage(
        input_tokens=1000, output_tokens=200, cached_tokens=300, cache_write_tokens=200
    )
    # 500 plain, 300 cached, 200 written, 200 output
    assert pricing.cost(usage, rates) == (500 * 1000 + 300 * 100 + 200 * 1250 + 200 * 5000)
    assert pricing.cost(ir.Usage(), rates) == 0


def test_cost_never_counts_more_cached_tokens_than_input_tokens() -> None:
    usage = ir.Usage(input_tokens=10, output_tokens=0, cached_tokens=50, cache_write_tokens=7)
    assert pricing.cost(usage, MINI) == 10 * 75


def test_cost_of_the_issue_example_is_exact() -> None:
    # gpt-4o-mini: 1234 input (34 cached) and 567 output tokens
    usage = ir.Usage(input_tokens=1234, output_tokens=567, cached_tokens=34)
    nano = pricing.cost(usage, MINI)
    assert nano == 1200 * 150 + 34 * 75 + 567 * 600
    assert pricing.usd(nano) == pytest.approx(0.00052275)


def test_missing_cache_prices_fall_back_to_the_input_price() -> None:
    assert pricing.rates_of(Price(input=2.0, output=8.0)) == pricing.Rates(2000, 8000, 2000, 2000)


def test_the_config_wins_then_name_type_undated_and_wildcards() -> None:
    configured = {
        "work/gpt-4o-mini": Price(input=1.0, output=1.0),
        "openai/gpt-4o": Price(input=9.0, output=9.0),
        "cheap/*": Price(input=0.001, output=0.002),
    }
    table = pricing.PriceTable(configured)
    assert table.lookup(provider("work"), "gpt-4o-mini") == pricing.Rates(1000, 1000, 1000, 1000)
    assert table.lookup(provider("other"), "gpt-4o-mini") == MINI
    assert table.lookup(provider("other"), "gpt-4o") == pricing.Rates(9000, 9000, 9000, 9000)
    assert table.lookup(provider("cheap"), "gpt-4o-mini") == pricing.Rates(1, 2, 1, 1)
    dated = table.lookup(provider("a", "anthropic"), "claude-haiku-4-5-20251001")
    assert dated == pricing.Rates(1000, 5000, 100, 1250)
    assert table.lookup(provider("az", "azure_openai"), "gpt-4o-mini") == MINI
    assert table.lookup(provider("local", "ollama"), "llama3.2") == pricing.Rates(0, 0, 0, 0)
    assert table.lookup(provider("other"), "my-finetune") is None


def test_an_estimate_reserves_max_tokens_or_a_default_output() -> None:
    assert pricing.estimate(100, 50, MINI) == 100 * 150 + 50 * 600
    assert pricing.estimate(100, None, MINI) == 100 * 150 + pricing.ESTIMATED_OUTPUT_TOKENS * 600


def test_the_dearest_target_sets_the_estimate() -> None:
    dear = pricing.Rates(input=1000, output=5000, cached_input=100, cache_write=1250)
    assert pricing.dearest_estimate([MINI, None, dear], 10, 2) == 10 * 1000 + 2 * 5000
    assert pricing.dearest_estimate([None], 10, 2) == 0


def test_a_spent_budget_is_a_429_that_says_so() -> None:
    info = pricing.budget_refusal("this API key", 5.0, "day", 3600)
    assert info.http_status == 429
    assert info.message == "this API key's budget of $5.00 per day is spent"
    assert info.retry_after == 3600
    tenant = pricing.budget_refusal("the tenant acme", 0.5, "month", 1)
    assert tenant.message == "the tenant acme's budget of $0.50 per month is spent"


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(5, "$5.00"), (0.25, "$0.25"), (1234.5, "$1,234.50"), (0.005, "$0.005"), (1e-6, "$0.000001")],
)
def test_dollars_show_cents_or_every_digit_below_a_cent(amount: float, shown: str) -> None:
    assert pricing.dollars(amount) == shown


def test_unpriced_targets_are_listed_once() -> None:
    config = parse(
        """
providers: [{name: oa, type: openai, base_url: "http://x", api_key: k}]
models:
  - {name: a, targets: [{provider: oa, model: gpt-4o-mini}, {provider: oa, model: ft-1}]}
  - {name: b, targets: [{provider: oa, model: ft-1}, {provider: oa, model: ft-2}]}
pricing: {oa/ft-2: {input: 1, output: 2}}
""",
        env={},
    )
    assert pricing.unpriced(pricing.PriceTable(config.pricing), config) == ["oa/ft-1"]
