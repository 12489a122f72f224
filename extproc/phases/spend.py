"""Money in the phases: money budgets held and settled, each attempt's cost booked.

The router phase `reserve`s a request's estimated cost against its virtual key's and
its tenant's `budget_usd` periods before any attempt (one atomic Lua call each, so
replicas cannot overshoot together); the hold travels to the attempts in the envelope. Each attempt
`book`s what it cost, priced from the provider's usage: the Redis ledger (key,
tenant, provider, model), the budget period ((actual − estimate) once, by the final
attempt) and `llmux_cost_usd_total`. Decides nothing itself: prices and estimates
come from decisions.pricing.
"""

from __future__ import annotations

from typing import NamedTuple

from extproc import ir
from extproc.config.settings import MoneyBudget, Provider
from extproc.decisions import keys, pricing
from extproc.decisions.usage import estimate_tokens
from extproc.phases.actions import Respond, error_response
from extproc.phases.context import Context, ModelRoute, store_unavailable
from extproc.phases.envelope import RequestInfo
from extproc.store import StoreError


class SpendHold(NamedTuple):
    """Reservations on money budget periods (the key's, its tenant's) of one request."""

    periods: tuple[tuple[str, int], ...]  # (the store's spend key, seconds left) per budget
    estimate: int  # nano-dollars reserved on each


def request_estimate(
    context: Context, route: ModelRoute, request: ir.ChatRequest | ir.EmbeddingRequest, size: int
) -> int:
    """Nano-dollars to reserve: the dearest target's price, since Envoy picks the target."""
    max_output = request.max_tokens if isinstance(request, ir.ChatRequest) else 0
    rates = [context.prices.lookup(provider, model) for provider, model in route.targets]
    return pricing.dearest_estimate(rates, estimate_tokens(size), max_output)


def budgets(context: Context, record: keys.VirtualKey) -> list[tuple[str, str, MoneyBudget]]:
    """(kind, name, budget) of each money budget a key's request spends from."""
    found = []
    if record.budget_usd is not None:
        found.append(("key", record.id, record.budget_usd))
    tenant = context.config.tenants.get(record.tenant)
    if tenant is not None and tenant.budget_usd is not None:
        found.append(("tenant", record.tenant, tenant.budget_usd))
    return found


async def reserve(
    context: Context, found: list[tuple[str, str, MoneyBudget]], estimate: int, dialect: str
) -> SpendHold | Respond | None:
    """Hold `estimate` on each of `found` (`budgets`' answer); a 429 when one is spent.

    None: nothing held, or the store failed and `store.on_error` is open.
    """
    store, held = context.store, SpendHold((), estimate)
    if store is None:
        return None
    for kind, name, budget in found:
        label, seconds_left = keys.period_id(budget.period, context.clock())
        spend_key = store.spend_key(kind, name, label)
        limit = round(budget.amount * pricing.NANO_PER_USD)
        try:
            reservation = await store.reserve_spend(spend_key, limit, estimate, seconds_left)
        except StoreError as exc:
            if context.store_failed(exc):
                continue
            release(context, held)
            return error_response(dialect, store_unavailable())
        if not reservation.ok:
            release(context, held)
            context.telemetry.metrics.rejection(f"{kind}_budget_usd")  # key_ or tenant_
            owner = "this API key" if kind == "key" else f"the tenant {name}"
            refusal = pricing.budget_refusal(owner, budget.amount, budget.period, seconds_left)
            return error_response(dialect, refusal)
        held = held._replace(periods=(*held.periods, (spend_key, seconds_left)))
    return held if held.periods else None


def hold_of(info: RequestInfo) -> SpendHold | None:
    """The hold the router phase took for this request, as the envelope carries it."""
    return SpendHold(info.spend_periods, info.spend_estimate) if info.spend_periods else None


def release(context: Context, hold: SpendHold | None) -> None:
    """Give a hold back when no attempt will settle it (the router answered itself)."""
    settle(context, hold, -hold.estimate if hold is not None else 0)


def settle(context: Context, hold: SpendHold | None, delta: int) -> None:
    """Adjust every period the request holds by `delta` nano-dollars (in the background)."""
    store = context.store
    if hold is None or store is None or not delta:
        return
    for spend_key, ttl in hold.periods:
        context.background(store.settle_spend(spend_key, delta, ttl))


def attempt_cost(context: Context, provider: Provider, model: str, usage: ir.Usage) -> int | None:
    """What an attempt's usage cost in nano-dollars; None when the target has no price."""
    rates = context.prices.lookup(provider, model)
    return None if rates is None else pricing.cost(usage, rates)


class Bill(NamedTuple):
    """One attempt's cost and the hold it settles."""

    provider: str
    model: str  # the target's upstream model
    key_id: str | None
    cost: int | None  # nano-dollars; None: not billed or no price (books no cost)
    hold: SpendHold | None


def book(context: Context, bill: Bill, *, final: bool) -> None:
    """Count the cost (Prometheus now; Redis in the background) and settle the hold.

    Every attempt adds what it cost to the periods held; the request's final attempt
    also gives the estimate back, so the periods end up holding exactly the cost.
    """
    cost = bill.cost or 0
    if bill.cost is not None:
        context.telemetry.metrics.cost(bill.provider, bill.model, bill.key_id, pricing.usd(cost))
    store = context.store
    if store is None:
        return
    if cost:
        context.background(store.record_cost(bill.provider, bill.model, cost))
    if final and bill.hold is not None:
        cost -= bill.hold.estimate
    settle(context, bill.hold, cost)
