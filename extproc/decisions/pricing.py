"""What a request costs: the price table, the cost of a usage, money budgets' estimates.

Money is counted in whole nano-dollars (1e-9 USD) from end to end: a price of $x per
1M tokens is 1000·x nano-dollars a token (config.settings.price_units), so a cost is an
integer sum of tokens × rates and the ledger's counters add up exactly. Floats appear
only where a human or Prometheus reads the figure (`usd`).

The table: the config's `pricing` over the bundled defaults (default_prices.py). A
target is priced by the first entry found, the config's first: `name/model` (the
provider's configured name), `type/model`, the model without a date suffix
(`claude-haiku-4-5-20251001` -> `claude-haiku-4-5`), then `name/*`, `type/*`. Azure
OpenAI deployments fall back to OpenAI's prices for the same model name.
No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from extproc import ir
from extproc.config.settings import Config, Period, Price, Provider, price_units
from extproc.decisions.default_prices import DEFAULT_PRICES

NANO_PER_USD = 1_000_000_000
# Output tokens a money budget reserves for a request that sets no max_tokens: a
# longer answer is settled at its real cost, and may overshoot the budget by the excess.
ESTIMATED_OUTPUT_TOKENS = 1024

_DATED = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")


class Rates(NamedTuple):
    """A price in nano-dollars per token."""

    input: int
    output: int
    cached_input: int
    cache_write: int


def rates_of(price: Price) -> Rates:
    """Rates of a validated price (the config refuses prices finer than a nano-dollar)."""

    def units(value: float) -> int:
        found = price_units(value)
        if found is None:
            raise ValueError(f"price {value} is finer than $0.001 per 1M tokens")
        return found

    plain = units(price.input)
    return Rates(
        input=plain,
        output=units(price.output),
        cached_input=plain if price.cached_input is None else units(price.cached_input),
        cache_write=plain if price.cache_write is None else units(price.cache_write),
    )


class PriceTable:
    """The config's prices over the defaults; looked up once per target and config."""

    def __init__(
        self, configured: Mapping[str, Price], defaults: Mapping[str, Price] = DEFAULT_PRICES
    ) -> None:
        self._tables = (
            {k: rates_of(p) for k, p in configured.items()},
            {k: rates_of(p) for k, p in defaults.items()},
        )
        # Every request prices its target: remember each answer (one table per config).
        self._found: dict[tuple[str, str, str], Rates | None] = {}

    def lookup(self, provider: Provider, model: str) -> Rates | None:
        """The target's rates, or None when neither table prices it."""
        target = (provider.name, provider.type, model)
        if target not in self._found:
            self._found[target] = self._search(provider, model)
        return self._found[target]

    def _search(self, provider: Provider, model: str) -> Rates | None:
        for table in self._tables:
            for key in _candidates(provider, model):
                found = table.get(key)
                if found is not None:
                    return found
        return None


def _candidates(provider: Provider, model: str) -> Iterator[str]:
    types = [provider.type, "openai"] if provider.type == "azure_openai" else [provider.type]
    undated = _DATED.sub("", model)
    for name in (model, undated) if undated != model else (model,):
        yield f"{provider.name}/{name}"
        yield from (f"{kind}/{name}" for kind in types)
    yield f"{provider.name}/*"
    yield from (f"{kind}/*" for kind in types)


def unpriced(table: PriceTable, config: Config) -> list[str]:
    """`provider/model` of every target neither the config nor the defaults price."""
    found = []
    for model in config.models:
        for target in model.targets:
            key = f"{target.provider}/{target.model}"
            if (
                key not in found
                and table.lookup(config.provider(target.provider), target.model) is None
            ):
                found.append(key)
    return found


def cost(usage: ir.Usage, rates: Rates) -> int:
    """Nano-dollars of one usage: cache reads and writes priced apart from plain input.

    The IR counts cached (read) and cache-write tokens inside input_tokens.
    """
    cached = min(usage.cached_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    plain = usage.input_tokens - cached - written
    return (
        plain * rates.input
        + cached * rates.cached_input
        + written * rates.cache_write
        + usage.output_tokens * rates.output
    )


def estimate(input_tokens: int, max_output_tokens: int | None, rates: Rates) -> int:
    """Nano-dollars a money budget reserves before the call (no cache discount assumed)."""
    output = ESTIMATED_OUTPUT_TOKENS if max_output_tokens is None else max_output_tokens
    return input_tokens * rates.input + output * rates.output


def dearest_estimate(
    rates: Iterable[Rates | None], input_tokens: int, max_output_tokens: int | None
) -> int:
    """The largest estimate over the targets Envoy may pick (0 when none has a price)."""
    found = (estimate(input_tokens, max_output_tokens, r) for r in rates if r is not None)
    return max(found, default=0)


def usd(nano: int) -> float:
    """Nano-dollars as US dollars, for people and Prometheus (not for sums)."""
    return nano / NANO_PER_USD


def dollars(amount: float) -> str:
    """$5.00, $0.25, and sub-cent amounts in full: $0.000001."""
    if amount >= 0.01 and round(amount * 100) == amount * 100:
        return f"${amount:,.2f}"
    return "$" + f"{amount:,.9f}".rstrip("0")


def budget_refusal(owner: str, limit_usd: float, period: Period, seconds_left: int) -> ir.ErrorInfo:
    """The 429 a spent money budget answers (402 is no standard across the dialects).

    `owner`: "this API key" or "the tenant acme".
    """
    return ir.ErrorInfo(
        kind="rate_limit",
        message=f"{owner}'s budget of {dollars(limit_usd)} per {period} is spent",
        retry_after=seconds_left,
    )
