"""The router phase with a strategy and the providers' limits, on both stores."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from extproc.decisions.provider_limits import ProviderLimits
from extproc.decisions.routing import credential_tag
from extproc.envoy.bootstrap import CLUSTER_HEADER
from extproc.envoy.contract import ordered_cluster_name
from extproc.phases.actions import Action
from extproc.phases.context import Context
from extproc.phases.router import RouterStream
from extproc.store import Store
from tests.unit import phase_world as world
from tests.unit.phase_world import continued, headers_of

CHAT = {":method": "POST", ":path": "/v1/chat/completions"}
ROUND_ROBIN: dict[str, Any] = {
    **world.CONFIG,
    "models": [
        {**model, "strategy": "round_robin"} if model["name"] == "pair" else model
        for model in world.CONFIG["models"]
    ],
}


async def send(ctx: Context) -> Action:
    stream = RouterStream(ctx, {})
    await stream.request_headers(CHAT, False, None)
    action = await stream.request_body(world.chat_body("pair"), True)
    stream.observe("request_body", action)
    return action


def test_round_robin_names_the_ordered_cluster_of_each_target_in_turn(
    new_store: Callable[[], Store],
) -> None:
    async def scenario() -> list[Action]:
        store = new_store()
        ctx = world.context(store, ROUND_ROBIN)
        actions = [await send(ctx) for _ in range(3)]
        await ctx.drain()
        await store.close()
        return actions

    actions = [continued(a) for a in asyncio.run(scenario())]
    cluster = world.context(None, ROUND_ROBIN).models["pair"].cluster
    assert [headers_of(a)[CLUSTER_HEADER] for a in actions] == [
        ordered_cluster_name(cluster, i) for i in (0, 1, 0)
    ]
    assert {a.eligible_mask for a in actions} == {0b11}  # fallback keeps both


def test_a_credential_its_provider_called_spent_leaves_the_mask_until_the_reset(
    new_store: Callable[[], Store],
) -> None:
    async def scenario() -> Action:
        store = new_store()
        ctx = world.context(store, ROUND_ROBIN)
        spent = ProviderLimits(0, 20_000, None, None)
        await store.note_provider_limits(credential_tag("an", "default"), spent)
        action = await send(ctx)
        await ctx.drain()
        await store.close()
        return action

    action = continued(asyncio.run(scenario()))
    cluster = world.context(None, ROUND_ROBIN).models["pair"].cluster
    assert action.eligible_mask == 0b01
    assert headers_of(action)[CLUSTER_HEADER] == ordered_cluster_name(cluster, 0)


def test_weighted_models_keep_their_own_cluster(new_store: Callable[[], Store]) -> None:
    async def scenario() -> Action:
        store = new_store()
        ctx = world.context(store)
        action = await send(ctx)
        await ctx.drain()
        await store.close()
        return action

    action = continued(asyncio.run(scenario()))
    assert headers_of(action)[CLUSTER_HEADER] == world.context().models["pair"].cluster
