"""One contract, two stores: the same cases against RedisStore on a real Valkey and the fake.

Unit tests of the phases use tests/fakes/memory_store.py; these cases keep it honest.
Each case gets a store whose clock is a FakeClock. `later(s)` moves that clock and,
for Valkey, also waits `s` real seconds (Redis expires keys on its own time), so
cases that wait keep their waits short.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis

from extproc.decisions.keys import key_tag
from extproc.decisions.provider_limits import DEFAULT_RESET_MS, ProviderLimits
from extproc.decisions.routing import CredentialState, credential_tag, target_tag
from extproc.decisions.strategy import TargetLoad, ewma, model_tag
from extproc.run.children import free_port
from extproc.store import RedisStore, Store, StoreError
from tests.fakes.clock import FakeClock
from tests.fakes.memory_store import MemoryStore
from tests.harness import Valkey

CRED = credential_tag("openai", "primary")
OTHER = credential_tag("openai", "backup")
TARGET = target_tag("openai", "gpt-4o-mini")
SLOW = target_tag("anthropic", "claude-haiku-4-5")
MODEL = model_tag("chat")


@dataclass
class Subject:
    store: Store
    clock: FakeClock
    real_time: bool  # Redis keeps TTLs on its own clock

    async def later(self, seconds: float) -> None:
        self.clock.advance(seconds)
        if self.real_time:
            await asyncio.sleep(seconds)


Case = Callable[[Subject], Awaitable[None]]


@pytest.fixture(params=["memory", "valkey"])
def run(request: pytest.FixtureRequest) -> Callable[[Case], None]:
    """Run a case against the store this parameter names."""
    url = None
    if request.param == "valkey":
        valkey: Valkey = request.getfixturevalue("valkey")
        request.getfixturevalue("db")  # emptied for this case
        url = valkey.url

    def go(case: Case) -> None:
        async def main() -> None:
            clock = FakeClock()
            if url is None:
                await case(Subject(MemoryStore(clock), clock, real_time=False))
                return
            store = RedisStore(url, clock=clock)
            await store.start()
            try:
                await case(Subject(store, clock, real_time=True))
            finally:
                await store.close()

        asyncio.run(main())

    return go


async def credential(store: Store, tag: str = CRED) -> CredentialState:
    return (await store.request_state([tag], [], None)).credentials[0]


# ---------------------------------------------------------------------- quotas and windows


def test_the_window_is_the_calendar_minute(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        window, left = s.store.window()
        assert (window, left) == (1_800_000_010 // 60, 50)
        s.clock.advance(49.5)
        assert s.store.window() == (window, 1)  # never 0
        s.clock.advance(0.5)
        assert s.store.window() == (window + 1, 60)

    run(case)


def test_rpm_admits_up_to_the_limit_then_says_when_the_window_ends(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        # With the window's request and token counts, for the rate-limit headers.
        assert await s.store.reserve(CRED, 2, None, 10) == (True, 0, 1, 0)
        assert await s.store.reserve(CRED, 2, None, 10) == (True, 0, 2, 0)
        assert await s.store.reserve(CRED, 2, None, 10) == (False, 50_000, 2, 0)
        assert await credential(s.store) == CredentialState(2, 0, 0)
        assert await credential(s.store, OTHER) == CredentialState(0, 0, 0)
        s.clock.advance(50)  # the next window: a fresh count
        assert (await s.store.reserve(CRED, 2, None, 10))[:2] == (True, 0)
        assert await credential(s.store) == CredentialState(1, 0, 0)

    run(case)


def test_an_unlimited_reservation_counts_nothing(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        for _ in range(3):
            assert (await s.store.reserve(CRED, None, None, 10**6))[:2] == (True, 0)
        assert await credential(s.store) == CredentialState(0, 0, 0)

    run(case)


def test_tpm_refuses_what_would_overflow_but_never_the_first_request(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        assert (await s.store.reserve(CRED, None, 100, 500))[:2] == (True, 0)  # nothing used yet
        assert await s.store.charge_tokens(CRED, 60) == 60
        assert await s.store.charge_tokens(CRED, 30) == 90
        assert await s.store.reserve(CRED, None, 100, 10) == (True, 0, 0, 90)
        assert await s.store.reserve(CRED, None, 100, 11) == (False, 50_000, 0, 90)
        assert await credential(s.store) == CredentialState(0, 90, 0)

    run(case)


def test_tokens_may_be_charged_to_the_window_the_request_started_in(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        started, _ = s.store.window()
        s.clock.advance(60)
        assert await s.store.charge_tokens(CRED, 7, started) == 7
        assert await credential(s.store) == CredentialState(0, 0, 0)  # this window: none
        s.clock.advance(-60)
        assert await credential(s.store) == CredentialState(0, 7, 0)

    run(case)


def test_reset_forgets_counters_and_cooldown(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        assert await s.store.reset_credential(CRED) == 0
        await s.store.reserve(CRED, 5, None, 1)
        await s.store.charge_tokens(CRED, 3)
        await s.store.cool_down(CRED, 5_000)
        assert await s.store.reset_credential(CRED) == 3
        assert await credential(s.store) == CredentialState(0, 0, 0)

    run(case)


# ---------------------------------------------------------------------- cooldowns


def test_a_shorter_cooldown_never_shortens_a_longer_one(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        assert await s.store.cool_down(CRED, 5_000) == 5_000
        assert 4_000 < await s.store.cool_down(CRED, 1_000) <= 5_000
        assert 4_000 < (await credential(s.store)).cooldown_ms <= 5_000
        assert await s.store.cool_down(CRED, 9_000) == 9_000
        assert 8_000 < (await credential(s.store)).cooldown_ms <= 9_000

    run(case)


def test_a_cooling_credential_refuses_reservations_until_it_cooled(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        await s.store.cool_down(CRED, 150)
        ok, retry_ms, *_ = await s.store.reserve(CRED, None, None, 1)
        assert not ok and 0 < retry_ms <= 150
        await s.later(0.2)
        assert (await s.store.reserve(CRED, None, None, 1))[:2] == (True, 0)
        assert (await credential(s.store)).cooldown_ms == 0

    run(case)


# ---------------------------------------------------------------------- provider limits


def test_a_limit_the_provider_calls_spent_makes_the_credential_wait_for_its_reset(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        await s.store.note_provider_limits(CRED, ProviderLimits(0, 300, 5000, 60_000))
        state = await credential(s.store)
        assert 200 < state.exhausted_ms <= 300 and state.cooldown_ms == 0
        ok, retry_ms, *_ = await s.store.reserve(CRED, 100, None, 1)
        assert not ok and 200 < retry_ms <= 300
        assert (await credential(s.store)).requests == 0  # a refusal counts nothing
        await s.later(0.35)
        assert (await credential(s.store)).exhausted_ms == 0
        assert (await s.store.reserve(CRED, 100, None, 1))[:2] == (True, 0)

    run(case)


def test_spent_tokens_count_as_exhausted_too_and_the_later_reset_wins(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        await s.store.note_provider_limits(CRED, ProviderLimits(10, 100, 0, 400))
        assert 300 < (await credential(s.store)).exhausted_ms <= 400
        await s.store.note_provider_limits(CRED, ProviderLimits(None, None, 50, 400))
        assert (await credential(s.store)).exhausted_ms == 0  # the newest word counts
        assert (await credential(s.store, OTHER)).exhausted_ms == 0

    run(case)


def test_reservations_use_up_what_the_provider_said_is_left(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        await s.store.note_provider_limits(CRED, ProviderLimits(2, 5_000, None, None))
        assert (await s.store.reserve(CRED, 100, None, 1))[:2] == (True, 0)
        assert (await s.store.reserve(CRED, 100, None, 1))[:2] == (True, 0)
        ok, retry_ms, *_ = await s.store.reserve(CRED, 100, None, 1)
        assert not ok and 4_000 < retry_ms <= 5_000
        assert 4_000 < (await credential(s.store)).exhausted_ms <= 5_000
        assert await s.store.reset_credential(CRED) == 2  # rpm count and live limits
        assert (await s.store.reserve(CRED, 100, None, 1))[:2] == (True, 0)

    run(case)


def test_a_limit_without_a_reset_is_trusted_for_the_default_time(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        await s.store.note_provider_limits(CRED, ProviderLimits(0, None, None, None))
        wait = (await credential(s.store)).exhausted_ms
        assert DEFAULT_RESET_MS - 1_000 < wait <= DEFAULT_RESET_MS

    run(case)


# ---------------------------------------------------------------------- strategies' state


def test_turns_count_up_per_model(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        assert [await s.store.next_turn(MODEL) for _ in range(3)] == [0, 1, 2]
        assert await s.store.next_turn(model_tag("other")) == 0

    run(case)


def test_in_flight_attempts_count_until_ended_or_their_lease_runs_out(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        async def busy() -> list[int]:
            return [load.in_flight for load in await s.store.target_loads([TARGET, SLOW])]

        assert await busy() == [0, 0]
        assert await s.store.busy_start(TARGET, "a1", 60_000) == 1
        assert await s.store.busy_start(TARGET, "a2", 200) == 2
        assert await s.store.busy_start(SLOW, "a3", 60_000) == 1
        assert await busy() == [2, 1]
        await s.store.busy_end(TARGET, "a1")
        await s.store.busy_end(TARGET, "a1")  # twice: still one less, not two
        assert await busy() == [1, 1]
        await s.later(0.25)  # a2 leaked: its lease ran out
        assert await busy() == [0, 1]
        assert await s.store.busy_start(TARGET, "a4", 60_000) == 1

    run(case)


def test_latency_averages_are_moving_averages_per_kind(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        assert await s.store.target_loads([TARGET]) == [TargetLoad(0, None, None)]
        assert await s.store.record_latency(TARGET, "total", 100.0) == 100.0
        assert await s.store.record_latency(TARGET, "total", 200.0) == pytest.approx(
            ewma(100.0, 200.0)
        )
        assert await s.store.record_latency(TARGET, "ttft", 12.5) == 12.5
        (load,) = await s.store.target_loads([TARGET])
        assert load == TargetLoad(0, 12.5, pytest.approx(ewma(100.0, 200.0)))
        assert (await s.store.target_loads([SLOW]))[0].total_ms is None

    run(case)


# ---------------------------------------------------------------------- circuit breakers


def test_the_breaker_opens_at_the_threshold_and_closes_after_open_ms(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        def fail() -> Awaitable[bool]:
            return s.store.record_failure(TARGET, window_ms=10_000, threshold=3, open_ms=150)

        assert [await fail(), await fail(), await fail()] == [False, False, True]
        (opened,) = (await s.store.request_state([], [TARGET], None)).opened_ms
        assert 0 < opened <= 150
        assert await fail() is False  # the count started again once it opened
        await s.later(0.2)
        assert (await s.store.request_state([], [TARGET], None)).opened_ms == [0]

    run(case)


def test_failures_older_than_the_window_do_not_count(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        def fail() -> Awaitable[bool]:
            return s.store.record_failure(TARGET, window_ms=100, threshold=2, open_ms=5_000)

        assert await fail() is False
        await s.later(0.15)
        assert await fail() is False
        assert await fail() is True

    run(case)


def test_reopening_never_shortens_an_open_breaker(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        assert await s.store.record_failure(TARGET, window_ms=1_000, threshold=1, open_ms=5_000)
        assert await s.store.record_failure(TARGET, window_ms=1_000, threshold=1, open_ms=100)
        (opened,) = (await s.store.request_state([], [TARGET], None)).opened_ms
        assert 4_000 < opened <= 5_000

    run(case)


# ---------------------------------------------------------------------- usage and budgets


def test_usage_adds_up_per_key_tenant_and_budget_period(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        budget = s.store.budget_key("key_1", "202701")
        assert budget != s.store.budget_key("key_1", "202702")
        assert budget != s.store.budget_key("key_2", "202701")
        counts = {"input_tokens": 3, "output_tokens": 4, "cached_tokens": 0}
        await s.store.record_usage("key_1", "acme", (budget, 3600), counts)
        await s.store.record_usage("key_1", "acme", (budget, 3600), counts)
        await s.store.record_usage(None, "acme", None, {"input_tokens": 1})
        twice = {"input_tokens": 6, "output_tokens": 8, "cached_tokens": 0}
        assert await s.store.usage("key", "key_1") == twice
        assert await s.store.usage("tenant", "acme") == {**twice, "input_tokens": 7}
        assert await s.store.usage("key", "key_2") == {}
        state = await s.store.request_state([], [], None, budget)
        assert state.budget_used == 14
        assert await s.store.key_usages(["key_1", "key_2", "key_1"], [budget, None, None]) == [
            (twice, 14),
            ({}, None),
            (twice, None),
        ]

    run(case)


def test_usage_without_a_key_or_budget_touches_no_budget(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        budget = s.store.budget_key("key_1", "20270101")
        await s.store.record_usage("key_1", None, None, {"input_tokens": 5})
        assert (await s.store.request_state([], [], None, budget)).budget_used == 0
        assert await s.store.usage("key", "key_1") == {"input_tokens": 5}
        assert await s.store.usage("tenant", "default") == {}

    run(case)


# ---------------------------------------------------------------------- cost ledger


def test_spend_is_reserved_until_the_limit_then_refused(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        spend = s.store.spend_key("key", "key_1", "20270101")
        assert spend != s.store.spend_key("key", "key_1", "20270102")
        assert spend != s.store.spend_key("tenant", "key_1", "20270101")
        assert spend != s.store.budget_key("key_1", "20270101")
        assert await s.store.reserve_spend(spend, 1000, 400, 60) == (True, 400)
        assert await s.store.reserve_spend(spend, 1000, 400, 60) == (True, 800)
        # the last admitted request may cross the limit, none after it
        assert await s.store.reserve_spend(spend, 1000, 400, 60) == (True, 1200)
        assert await s.store.reserve_spend(spend, 1000, 400, 60) == (False, 1200)
        # settling (actual - estimate) frees what the answers did not cost
        assert await s.store.settle_spend(spend, 100 - 400, 60) == 900
        assert await s.store.reserve_spend(spend, 1000, 400, 60) == (True, 1300)
        other = s.store.spend_key("key", "key_2", "20270101")
        assert await s.store.spends([spend, None, other]) == [1300, None, 0]

    run(case)


def test_concurrent_spend_reservations_overshoot_by_at_most_one_estimate(
    run: Callable[[Case], None],
) -> None:
    async def case(s: Subject) -> None:
        spend = s.store.spend_key("tenant", "acme", "202701")
        results = await asyncio.gather(
            *(s.store.reserve_spend(spend, 1000, 300, 60) for _ in range(50))
        )
        assert sum(r.ok for r in results) == 4  # 0, 300, 600, 900 < 1000
        assert await s.store.spends([spend]) == [1200]

    run(case)


def test_cost_adds_up_per_provider_and_model(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        assert await s.store.costs() == {"providers": {}, "models": {}}
        await s.store.record_cost("openai", "gpt-4o-mini", 123_456)
        await s.store.record_cost("openai", "gpt-4o", 10**15)
        await s.store.record_cost("azure", "gpt-4o-mini", 1)
        assert await s.store.costs() == {
            "providers": {"openai": 10**15 + 123_456, "azure": 1},
            "models": {"gpt-4o-mini": 123_457, "gpt-4o": 10**15},
        }

    run(case)


# ---------------------------------------------------------------------- stored responses


def test_a_stored_response_is_kept_per_tenant_until_deleted(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        mine, theirs = (
            s.store.response_key("acme", "resp_1"),
            s.store.response_key("globex", "resp_1"),
        )
        assert mine != theirs and "{tenant:acme}" in mine  # one hash slot per tenant
        assert await s.store.response_get(mine) is None
        await s.store.response_put(mine, b"record", 60)
        assert await s.store.response_get(mine) == b"record"
        assert await s.store.response_get(theirs) is None
        assert await s.store.response_delete(theirs) is False
        assert await s.store.response_delete(mine) is True
        assert await s.store.response_get(mine) is None
        assert await s.store.response_delete(mine) is False

    run(case)


def test_a_stored_response_expires_after_its_ttl(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        key = s.store.response_key("global", "resp_2")
        await s.store.response_put(key, b"record", 1)
        await s.later(1.05)
        assert await s.store.response_get(key) is None

    run(case)


# ---------------------------------------------------------------------- cache


def test_a_cache_entry_comes_back_with_the_request_state(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        key = s.store.cache_key("gpt-4o-mini", "abc")
        assert key == s.store.cache_key("gpt-4o-mini", "abc") != s.store.cache_key("m", "abc")
        assert (await s.store.request_state([CRED], [TARGET], key)).cached is None
        await s.store.cache_put(key, b"entry", 60)
        state = await s.store.request_state([CRED], [TARGET], key)
        assert state == ([CredentialState(0, 0, 0)], [0], b"entry", 0)
        assert (await s.store.request_state([], [], None)).cached is None

    run(case)


def test_a_cache_entry_expires_after_its_ttl(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        key = s.store.cache_key("m", "d")
        await s.store.cache_put(key, b"entry", 1)
        await s.later(1.05)
        assert (await s.store.request_state([], [], key)).cached is None
        assert (await s.store.cache_stats())["entries"] == 0

    run(case)


def test_cache_counters_stats_and_clearing(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        empty = {"hits": 0, "misses": 0, "hit_ratio": 0.0}
        assert await s.store.cache_counts() == empty
        for outcome in ("hit", "miss", "miss"):
            await s.store.cache_count(outcome)
        counts = {"hits": 1, "misses": 2, "hit_ratio": 0.3333}
        assert await s.store.cache_counts() == counts
        await s.store.cache_put(s.store.cache_key("a*", "1"), b"12345", 60)
        await s.store.cache_put(s.store.cache_key("a*", "2"), b"12", 60)
        await s.store.cache_put(s.store.cache_key("ab", "3"), b"1", 60)
        assert await s.store.cache_stats() == {"entries": 3, "bytes": 8, **counts}
        assert await s.store.cache_clear("a*") == 2  # a glob character is only a character
        assert await s.store.cache_stats() == {"entries": 1, "bytes": 1, **counts}
        assert await s.store.cache_clear() == 1
        assert await s.store.cache_stats() == {"entries": 0, "bytes": 0, **empty}

    run(case)


# ---------------------------------------------------------------------- virtual keys


def test_keys_are_found_by_hash_and_by_id(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        assert await s.store.key_ids() == []
        assert await s.store.keys_by_ids([]) == []
        await s.store.key_save("key_b", "hash-b", b"record b")
        await s.store.key_save("key_a", "hash-a", b"record a")
        assert await s.store.key_by_hash("hash-a") == b"record a"
        assert await s.store.key_by_hash("hash-c") is None
        assert await s.store.key_by_id("key_b") == b"record b"
        assert await s.store.keys_by_ids(["key_a", "nope", "key_b"]) == [
            b"record a",
            None,
            b"record b",
        ]
        await s.store.key_save("key_a", "hash-a", b"record a, revoked")
        assert await s.store.key_by_id("key_a") == b"record a, revoked"
        assert await s.store.key_ids() == ["key_a", "key_b"]

    run(case)


def test_a_key_tag_is_the_quota_name_of_a_key(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        tag = key_tag("key_a")
        assert (await s.store.reserve(tag, 1, None, 1))[:2] == (True, 0)
        assert (await s.store.reserve(tag, 1, None, 1)).ok is False
        assert await credential(s.store, tag) == CredentialState(1, 0, 0)

    run(case)


# ---------------------------------------------------------------------- dashboard activity


def test_activity_keeps_the_newest_records_and_sums_minutes(run: Callable[[Case], None]) -> None:
    async def case(s: Subject) -> None:
        await s.store.activity_push([b"1", b"2"], {60: {"requests": 2}}, keep=3, ttl_s=60)
        await s.store.activity_push(
            [b"3", b"4"], {60: {"requests": 1, "errors": 1}}, keep=3, ttl_s=60
        )
        await s.store.activity_push([], {120: {"requests": 1}}, keep=3, ttl_s=60)
        records, sums = await s.store.activity_read(2, [60, 120, 180])
        assert records == [b"4", b"3"]
        assert sums == [{"requests": 3, "errors": 1}, {"requests": 1}, {}]
        assert (await s.store.activity_read(10, []))[0] == [b"4", b"3", b"2"]

    run(case)


# ---------------------------------------------------------------------- failure


def test_an_unreachable_store_raises_store_error_and_pings_false() -> None:
    async def main(store: Store) -> None:
        assert await store.ping() is False
        for call in (
            store.request_state([CRED], [TARGET], None),
            store.reserve(CRED, 1, None, 1),
            store.cool_down(CRED, 10),
            store.record_usage("key_1", "t", None, {"input_tokens": 1}),
            store.cache_put("k", b"v", 1),
            store.key_save("key_1", "h", b"r"),
            store.activity_read(1, []),
            store.reserve_spend("s", 1, 1, 1),
            store.settle_spend("s", 1, 1),
            store.record_cost("p", "m", 1),
            store.note_provider_limits(CRED, ProviderLimits(0, 1, None, None)),
            store.next_turn(MODEL),
            store.busy_start(TARGET, "a", 1),
            store.busy_end(TARGET, "a"),
            store.record_latency(TARGET, "ttft", 1.0),
            store.target_loads([TARGET]),
        ):
            with pytest.raises(StoreError):
                await call

    fake = MemoryStore(FakeClock())
    fake.failing = True
    asyncio.run(main(fake))

    async def unreachable() -> None:
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
        try:
            await main(store)
        finally:
            await store.close()

    asyncio.run(unreachable())


@pytest.mark.parametrize("implementation", [MemoryStore, RedisStore])
def test_each_store_has_every_method_of_the_protocol(implementation: type) -> None:
    """Names, parameters, defaults and async-ness as `Store` declares them (mypy checks
    RedisStore statically; it does not read tests/, so this checks the fake too)."""
    members = {n for c in Store.__mro__ if c is not object for n in vars(c) if n[0] != "_"}
    assert {"reserve", "key_save", "cache_put", "activity_read", "ping"} <= members
    for name in members:
        declared, given = getattr(Store, name), getattr(implementation, name)
        assert inspect.iscoroutinefunction(given) == inspect.iscoroutinefunction(declared), name
        wanted = list(inspect.signature(declared).parameters.values())
        found = list(inspect.signature(given).parameters.values())
        if isinstance(inspect.getattr_static(implementation, name), staticmethod):
            wanted = wanted[1:]  # no `self`
        assert [(p.name, p.kind, p.default) for p in found] == [
            (p.name, p.kind, p.default) for p in wanted
        ], name


def test_redis_keys_keep_their_names(valkey: Valkey, db: redis.Redis) -> None:
    """Existing deployments' data stays readable: the key layout is part of the contract."""

    async def main() -> None:
        store = RedisStore(valkey.url, clock=FakeClock())
        try:
            await store.key_save("key_1", "h", b"r")
            await store.reserve(CRED, 1, None, 1)
            await store.cool_down(CRED, 1_000)
            await store.record_failure(TARGET, window_ms=1_000, threshold=1, open_ms=1_000)
            await store.reserve_spend(store.spend_key("key", "key_1", "202701"), 10, 1, 60)
            await store.reserve_spend(store.spend_key("tenant", "acme", "202701"), 10, 1, 60)
            await store.record_cost("openai", "gpt-4o-mini", 1)
            await store.note_provider_limits(CRED, ProviderLimits(0, 5_000, None, None))
            await store.next_turn(MODEL)
            await store.busy_start(TARGET, "a1", 5_000)
            await store.record_latency(TARGET, "ttft", 1.0)
        finally:
            await store.close()

    asyncio.run(main())
    window = 1_800_000_010 // 60
    names = [k.decode() for k in db.keys("*")]
    # Money's once-markers (a retried call counts once) live beside their counter, in its
    # slot: a tagged counter's tag, or an untagged counter's whole name as the tag.
    markers = sorted(re.sub(r":once:[0-9a-f]+$", ":once:*", n) for n in names if ":once:" in n)
    assert markers == sorted(
        [
            "llmux:{k:key_1}:once:*",
            "llmux:{tenant:acme}:once:*",
            "{llmux:cost:providers}:once:*",
            "{llmux:cost:models}:once:*",
        ]
    )
    assert sorted(n for n in names if ":once:" not in n) == sorted(
        [
            "llmux:vkey:h",
            "llmux:vkey-id:key_1",
            "llmux:vkeys",
            f"llmux:{{c:openai:primary}}:rpm:{window}",
            "llmux:{c:openai:primary}:cool",
            "llmux:{t:openai/gpt-4o-mini}:open",
            "llmux:{k:key_1}:spend:202701",
            "llmux:{tenant:acme}:spend:202701",
            "llmux:cost:providers",
            "llmux:cost:models",
            "llmux:{c:openai:primary}:live",
            "llmux:{m:chat}:turn",
            "llmux:{t:openai/gpt-4o-mini}:busy",
            "llmux:{t:openai/gpt-4o-mini}:latency",
        ]
    )
