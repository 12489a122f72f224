"""Money budgets and the cost ledger in the phases: held by the router, settled by the attempt.

The phases are driven directly (no Envoy) on the in-memory store and on Valkey; the
costs are the config's prices times the usage the provider answers report.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from extproc.decisions import keys
from extproc.phases.actions import Action
from extproc.phases.context import Context
from extproc.phases.router import RouterStream
from extproc.store import Store
from tests.unit import phase_world as world
from tests.unit.phase_world import continued, responded

CHAT = {":method": "POST", ":path": "/v1/chat/completions"}
MESSAGES = {":method": "POST", ":path": "/v1/messages"}
# gpt-x: $1,000 in, $2,000 out per 1M tokens: 1,000,000 and 2,000,000 nano-dollars a token
PRICED = {
    **world.CONFIG,
    "auth": {"required": True},
    "pricing": {"oa/gpt-x": {"input": 1000.0, "output": 2000.0, "cached_input": 500.0}},
    "tenants": {"lean": {"budget_usd": {"amount": 0.01, "period": "month"}}},
}


async def with_key(store: Store, tenant: str = "acme", **budget: Any) -> keys.VirtualKey:
    _, record = keys.create(keys.KeySpec(name="t", tenant=tenant, **budget), world.NOW)
    record = keys.VirtualKey(**{**keys.msgspec.structs.asdict(record), "hash": keys.digest("s")})
    await store.key_save(record.id, record.hash, keys.encode_record(record))
    return record


async def answered(ctx: Context, body: bytes, headers: dict[str, str] = CHAT) -> Action:
    """One request to a single-target model, answered by the provider in full."""
    stream = RouterStream(ctx, {})
    auth = {**headers, "authorization": "Bearer s"}
    action = await stream.request_headers(auth, False, None)
    action = await stream.request_body(body, True)
    stream.observe("request_body", action)
    if stream.attempt is not None:
        upstream = {":status": "200", "x-envoy-upstream-service-time": "3"}
        await stream.response_headers(upstream)
        await stream.response_body(world.openai_completion("Hello", prompt=40), True)
        stream.closed()
    await ctx.drain()
    return action


def spent(store: Store, key: keys.VirtualKey) -> Any:
    label, _ = keys.period_id("day", world.NOW)
    return store.spends([store.spend_key("key", key.id, label)])


def test_the_hold_is_settled_to_the_answers_cost(new_store: Callable[[], Store]) -> None:
    budget = keys.MoneyBudget(amount=1.0, period="day")

    async def scenario() -> tuple[list[int | None], dict[str, int], dict[str, dict[str, int]]]:
        store = new_store()
        ctx = world.context(store, PRICED)
        key = await with_key(store, budget_usd=budget)
        continued(await answered(ctx, world.chat_body("solo")))
        return await spent(store, key), await store.usage("key", key.id), await store.costs()

    held, usage, costs = asyncio.run(scenario())
    cost = 40 * 1_000_000 + 2 * 2_000_000  # the completion's 40 prompt, 2 completion tokens
    assert held == [cost]
    assert usage == {"requests": 1, "input_tokens": 40, "output_tokens": 2, "cost_nano_usd": cost}
    assert costs == {"providers": {"oa": cost}, "models": {"gpt-x": cost}}


def test_a_spent_key_budget_is_a_429_in_the_clients_dialect(
    new_store: Callable[[], Store],
) -> None:
    budget = keys.MoneyBudget(amount=0.00001, period="day")  # 10,000 nano-dollars

    async def scenario() -> tuple[Action, Action, Context]:
        store = new_store()
        ctx = world.context(store, PRICED)
        await with_key(store, budget_usd=budget)
        body = json.dumps(
            {"model": "solo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        return await answered(ctx, body, MESSAGES), await answered(ctx, body, MESSAGES), ctx

    first, second, ctx = asyncio.run(scenario())
    continued(first)  # $0.044 spent: the last request admitted may cross the budget
    refusal = responded(second)
    assert refusal.status == 429
    error = json.loads(refusal.body)
    assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
    assert error["error"]["message"] == "this API key's budget of $0.00001 per day is spent"
    assert int(dict(refusal.headers)["retry-after"]) > 0
    scope = {"scope": "key_budget_usd"}
    assert world.sample(ctx, "llmux_quota_rejections_total", scope) == 1


def test_a_tenants_budget_is_shared_by_its_keys(new_store: Callable[[], Store]) -> None:
    async def scenario() -> tuple[Action, Action, Context]:
        store = new_store()
        ctx = world.context(store, PRICED)
        await with_key(store, tenant="lean")
        first = await answered(ctx, world.chat_body("solo"))
        return first, await answered(ctx, world.chat_body("solo")), ctx

    first, second, ctx = asyncio.run(scenario())
    continued(first)
    message = json.loads(responded(second).body)["error"]["message"]
    assert message == "the tenant lean's budget of $0.01 per month is spent"
    scope = {"scope": "tenant_budget_usd"}
    assert world.sample(ctx, "llmux_quota_rejections_total", scope) == 1


def test_an_unpriced_model_holds_nothing_and_books_no_cost(
    new_store: Callable[[], Store],
) -> None:
    budget = keys.MoneyBudget(amount=1.0, period="day")

    async def scenario() -> tuple[list[int | None], dict[str, int], dict[str, dict[str, int]]]:
        store = new_store()
        config = {**PRICED, "pricing": {}}
        ctx = world.context(store, config)
        key = await with_key(store, budget_usd=budget)
        continued(await answered(ctx, world.chat_body("solo")))
        return await spent(store, key), await store.usage("key", key.id), await store.costs()

    held, usage, costs = asyncio.run(scenario())
    assert held == [0]
    assert "cost_nano_usd" not in usage
    assert costs == {"providers": {}, "models": {}}
