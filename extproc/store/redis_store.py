"""The only module that talks to Redis: key names, Lua scripts, `RedisStore`.

Routing state (quota windows, cooldowns, circuit breakers) lives here so every
replica agrees. Keys carry hash tags — one per credential, one per target — so a
Redis Cluster keeps each script's keys in one slot. Reads for a routing decision
go out as one pipeline (one round trip); writes are atomic Lua scripts.
Redis errors become StoreError in `_redis_errors` only; callers decide fail-open or
fail-closed. What the store offers is the `Store` Protocol (protocol.py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from extproc.config.settings import StoreTls
from extproc.decisions.keys import key_tag, tenant_tag
from extproc.decisions.provider_limits import DEFAULT_RESET_MS, ProviderLimits
from extproc.decisions.routing import CredentialState
from extproc.decisions.strategy import EWMA_ALPHA, TargetLoad
from extproc.store import scripts
from extproc.store.connect import close, connect
from extproc.store.once import (
    LOST_CONNECTION,
    MARKER_TTL_MS,
    Increment,
    marker,
    raised_by_redis_py,
    retried,
)
from extproc.store.protocol import (
    LATENCY_TTL_S,
    LatencyKind,
    RequestState,
    Reservation,
    SpendReservation,
    StoreError,
    quota_window,
)

PREFIX = "llmux"


@contextmanager
def _redis_errors() -> Iterator[None]:
    """Redis's errors as ours: the one place a RedisError is mapped."""
    try:
        yield
    except (RedisError, RedisClusterException) as exc:
        raise StoreError(str(exc)) from exc
    except LOST_CONNECTION as exc:
        if not raised_by_redis_py(exc):
            raise
        raise StoreError(f"redis-py lost the connection mid-call ({exc})") from exc


class RedisStore:
    """The `Store` over Redis: async access with a bounded pool and short timeouts (never a hang)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 64,
        timeout_s: float = 0.5,
        tls: StoreTls | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        """`url` in any form connect.py takes (one node, a Cluster, Sentinel)."""
        self.redis = connect(
            url,
            tls or StoreTls(),
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=0,
        )  # calls fail fast (connect.py); accounting writes are sent again (once.retried)
        self.clock, self.new_id = clock, new_id
        register = self.redis.register_script
        self._reserve = register(scripts.RESERVE)
        self._cool = register(scripts.COOL)
        self._fail = register(scripts.FAIL)
        self._reserve_spend = register(scripts.RESERVE_SPEND)
        self._live = register(scripts.LIVE)
        self._busy = register(scripts.BUSY)
        self._latency = register(scripts.LATENCY)
        self._add_once = register(scripts.ADD_ONCE)

    async def start(self) -> None:
        """Learn a Cluster's slot map now, before requests come: redis-py's cluster client
        fails some of many concurrent first calls while it learns it. Never raises (a
        store that is down now is `store.on_error`'s case, per request)."""
        if isinstance(self.redis, RedisCluster):
            try:
                await self.redis.initialize()
            except (RedisError, RedisClusterException):
                pass

    async def close(self) -> None:
        await close(self.redis)

    def window(self) -> tuple[int, int]:
        """(current window id, seconds left in it)."""
        return quota_window(self.clock())

    def keys(self, tag: str, window: int) -> tuple[str, str, str]:
        return (
            f"{PREFIX}:{tag}:rpm:{window}",
            f"{PREFIX}:{tag}:tpm:{window}",
            f"{PREFIX}:{tag}:cool",
        )

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def add_once(self, counters: Sequence[Increment]) -> int:
        """Add to counters of one slot, once even when sent again; the first's new value."""
        token = self.new_id()
        keys = [marker(counters[0].key, token), *(c.key for c in counters)]
        args: list[str | int] = [MARKER_TTL_MS]
        for counter in counters:
            args += [counter.field, counter.amount, counter.ttl_s]
        with _redis_errors():
            return int(await retried(lambda: self._add_once(keys=keys, args=args)))

    async def request_state(
        self,
        credential_tags: Sequence[str],
        target_tags: Sequence[str],
        cache_key: str | None,
        budget_key: str | None = None,
    ) -> RequestState:
        """Quota use, cooldowns, open breakers and the cache entry: one round trip."""
        window, _ = self.window()
        with _redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for tag in credential_tags:
                    rpm, tpm, cool = self.keys(tag, window)
                    pipe.get(rpm).get(tpm).pttl(cool)  # type: ignore[attr-defined]
                    pipe.hmget(f"{PREFIX}:{tag}:live", _LIVE_FIELDS)
                for tag in target_tags:
                    pipe.pttl(f"{PREFIX}:{tag}:open")
                pipe.get(cache_key or f"{PREFIX}:none")
                pipe.get(budget_key or f"{PREFIX}:none")
                replies = await pipe.execute()
        n, now = 4 * len(credential_tags), self.now_ms()
        states = [
            CredentialState(
                int(replies[i] or 0),
                int(replies[i + 1] or 0),
                max(0, replies[i + 2]),
                exhausted_ms(replies[i + 3], now),
            )
            for i in range(0, n, 4)
        ]
        opened = [max(0, int(ms)) for ms in replies[n : n + len(target_tags)]]
        cached = replies[-2] if cache_key is not None else None
        return RequestState(states, opened, cached, int(replies[-1] or 0))

    async def reserve(
        self, tag: str, rpm: int | None, tpm: int | None, estimate: int
    ) -> Reservation:
        window, ttl = self.window()
        with _redis_errors():
            ok, retry_ms, *used = await self._reserve(
                keys=[*self.keys(tag, window), f"{PREFIX}:{tag}:live"],
                args=[rpm or 0, tpm or 0, estimate, ttl + 60, self.now_ms()],
            )
        if int(retry_ms) < 0:
            retry_ms = ttl * 1000
        return Reservation(bool(ok), int(retry_ms), *(int(n) for n in used))

    async def charge_tokens(self, tag: str, tokens: int, window: int | None = None) -> int:
        current, ttl = self.window()
        _, tpm, _ = self.keys(tag, current if window is None else window)
        return await self.add_once([Increment(tpm, "", tokens, ttl + 60)])

    async def reset_credential(self, tag: str) -> int:
        """Forget a credential's counters, cooldown and provider limits (this window's)."""
        window, _ = self.window()
        with _redis_errors():
            return int(await self.redis.delete(*self.keys(tag, window), f"{PREFIX}:{tag}:live"))

    async def cool_down(self, tag: str, milliseconds: int) -> int:
        with _redis_errors():
            return int(await self._cool(keys=[f"{PREFIX}:{tag}:cool"], args=[milliseconds]))

    async def record_failure(
        self, tag: str, *, window_ms: int, threshold: int, open_ms: int
    ) -> bool:
        """Count a failure of a target; True when its circuit breaker (re)opened."""
        keys = [f"{PREFIX}:{tag}:fail", f"{PREFIX}:{tag}:open"]
        with _redis_errors():
            return bool(await self._fail(keys=keys, args=[window_ms, threshold, open_ms]))

    async def note_provider_limits(self, tag: str, limits: ProviderLimits) -> None:
        """Keep what a provider's headers said of a credential's limits until their reset."""
        args: list[str | int] = [self.now_ms()]
        for left, reset in (
            (limits.requests_remaining, limits.requests_reset_ms),
            (limits.tokens_remaining, limits.tokens_reset_ms),
        ):
            args += ["", ""] if left is None else [left, reset or DEFAULT_RESET_MS]
        with _redis_errors():
            await self._live(keys=[f"{PREFIX}:{tag}:live"], args=args)

    async def next_turn(self, tag: str) -> int:
        """The model's shared round-robin counter, advanced by one: this request's turn."""
        with _redis_errors():
            return int(await self.redis.incr(f"{PREFIX}:{tag}:turn")) - 1

    async def busy_start(self, tag: str, attempt_id: str, lease_ms: int) -> int:
        """Count an attempt in flight on a target until busy_end or its lease runs out."""
        with _redis_errors():
            keys = [f"{PREFIX}:{tag}:busy"]
            return int(await self._busy(keys=keys, args=[attempt_id, self.now_ms(), lease_ms]))

    async def busy_end(self, tag: str, attempt_id: str) -> None:
        with _redis_errors():
            await self.redis.zrem(f"{PREFIX}:{tag}:busy", attempt_id)

    async def record_latency(self, tag: str, kind: LatencyKind, ms: float) -> float:
        """Fold one sample into the target's average of this kind; the new average."""
        keys = [f"{PREFIX}:{tag}:latency"]
        with _redis_errors():
            found = await self._latency(keys=keys, args=[kind, ms, EWMA_ALPHA, LATENCY_TTL_S])
        return float(found)

    async def target_loads(self, target_tags: Sequence[str]) -> list[TargetLoad]:
        """Per target: attempts in flight and its latency averages (one round trip)."""
        now = self.now_ms()
        with _redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for tag in target_tags:
                    pipe.zcount(f"{PREFIX}:{tag}:busy", f"({now}", "+inf")
                    pipe.hmget(f"{PREFIX}:{tag}:latency", ["ttft", "total"])
                replies = await pipe.execute()
        return [
            TargetLoad(int(busy), _float(ttft), _float(total))
            for busy, (ttft, total) in zip(replies[::2], replies[1::2], strict=True)
        ]

    # ------------------------------------------------------------------ virtual keys

    async def key_by_hash(self, hashed: str) -> bytes | None:
        with _redis_errors():
            value = cast("bytes | None", await self.redis.get(f"{PREFIX}:vkey:{hashed}"))
        return value

    async def key_by_id(self, key_id: str) -> bytes | None:
        return (await self.keys_by_ids([key_id]))[0]

    async def keys_by_ids(self, key_ids: Sequence[str]) -> list[bytes | None]:
        """Several keys' records in two round trips (None where one is missing)."""
        if not key_ids:
            return []
        with _redis_errors():
            # Pipelines of GETs, not MGET: the keys live in different cluster slots.
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id in key_ids:
                    pipe.get(f"{PREFIX}:vkey-id:{key_id}")
                hashes = await pipe.execute()
            found = [h for h in hashes if h is not None]
            async with self.redis.pipeline(transaction=False) as pipe:
                for hashed in found:
                    pipe.get(f"{PREFIX}:vkey:{hashed.decode()}")
                records = await pipe.execute()
        by_hash = dict(zip(found, records, strict=True))
        return [None if h is None else by_hash[h] for h in hashes]

    async def key_save(self, key_id: str, hashed: str, record: bytes) -> None:
        """The record, then its id's pointer, then the id list: a lookup never finds an id
        whose record is missing.

        Three slots on a Cluster, so three writes in this order instead of one MULTI;
        a crash between them leaves at worst a record nothing lists, whose secret was
        never shown (the admin API answers only after the save).
        """
        with _redis_errors():
            await self.redis.set(f"{PREFIX}:vkey:{hashed}", record)
            await self.redis.set(f"{PREFIX}:vkey-id:{key_id}", hashed)
            await self.redis.sadd(f"{PREFIX}:vkeys", key_id)

    async def key_ids(self) -> list[str]:
        with _redis_errors():
            members = cast("set[bytes]", await self.redis.smembers(f"{PREFIX}:vkeys"))
            return sorted(m.decode() for m in members)

    def budget_key(self, key_id: str, period: str) -> str:
        return f"{PREFIX}:{key_tag(key_id)}:budget:{period}"

    async def record_usage(
        self,
        key_id: str | None,
        tenant: str | None,
        budget: tuple[str, int] | None,
        usage: dict[str, int],
    ) -> None:
        """Add a request's usage to its key (and budget period) and its tenant, once each."""
        writes = []
        if key_id is not None:
            usage_key = f"{PREFIX}:{key_tag(key_id)}:usage"
            counters = [Increment(usage_key, field, n) for field, n in usage.items()]
            if budget is not None:
                budget_key, ttl = budget
                tokens = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
                counters.append(Increment(budget_key, "", tokens, ttl + 86400))
            writes.append(self.add_once(counters))
        if tenant is not None:
            tenant_key = f"{PREFIX}:{tenant_tag(tenant)}:usage"
            writes.append(self.add_once([Increment(tenant_key, f, n) for f, n in usage.items()]))
        await _together(writes)

    async def usage(self, kind: str, name: str) -> dict[str, int]:
        tag = key_tag(name) if kind == "key" else tenant_tag(name)
        with _redis_errors():
            values = cast("dict[bytes, bytes]", await self.redis.hgetall(f"{PREFIX}:{tag}:usage"))
        return {k.decode(): int(v) for k, v in values.items()}

    # ------------------------------------------------------------------ cost ledger

    def spend_key(self, kind: str, name: str, period: str) -> str:
        tag = key_tag(name) if kind == "key" else tenant_tag(name)
        return f"{PREFIX}:{tag}:spend:{period}"

    async def reserve_spend(
        self, spend_key: str, limit: int, estimate: int, ttl_s: int
    ) -> SpendReservation:
        with _redis_errors():
            ok, spent = await self._reserve_spend(
                keys=[spend_key, marker(spend_key, self.new_id())],
                args=[limit, estimate, ttl_s + 86400, MARKER_TTL_MS],
            )
        return SpendReservation(bool(ok), int(spent))

    async def settle_spend(self, spend_key: str, delta: int, ttl_s: int) -> int:
        return await self.add_once([Increment(spend_key, "", delta, ttl_s + 86400)])

    async def spends(self, spend_keys: Sequence[str | None]) -> list[int | None]:
        with _redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in spend_keys:
                    pipe.get(key or f"{PREFIX}:none")
                replies = await pipe.execute()
        return [
            None if k is None else int(v or 0) for k, v in zip(spend_keys, replies, strict=True)
        ]

    async def record_cost(self, provider: str, model: str, nano: int) -> None:
        await _together(
            [
                self.add_once([Increment(f"{PREFIX}:cost:providers", provider, nano)]),
                self.add_once([Increment(f"{PREFIX}:cost:models", model, nano)]),
            ]
        )

    async def costs(self) -> dict[str, dict[str, int]]:
        with _redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(f"{PREFIX}:cost:providers").hgetall(f"{PREFIX}:cost:models")  # type: ignore[attr-defined]
                providers, models = await pipe.execute()
        return {
            "providers": {k.decode(): int(v) for k, v in providers.items()},
            "models": {k.decode(): int(v) for k, v in models.items()},
        }

    # ------------------------------------------------------------------ cache

    @staticmethod
    def cache_key(model: str, digest: str) -> str:
        return f"{PREFIX}:cache:{model}:{digest}"

    async def cache_put(self, key: str, data: bytes, ttl_s: int) -> None:
        with _redis_errors():
            await self.redis.set(key, data, ex=ttl_s)

    async def cache_count(self, outcome: str) -> None:
        with _redis_errors():
            await self.redis.hincrby(f"{PREFIX}:cache-stats", outcome, 1)

    async def cache_stats(self) -> dict[str, float]:
        """Entries, bytes, hits, misses, hit ratio (entries/bytes scan the keyspace)."""
        counts = await self.cache_counts()
        entries = size = 0
        with _redis_errors():
            async for key in self.redis.scan_iter(match=f"{PREFIX}:cache:*", count=500):
                entries += 1
                size += int(await self.redis.strlen(key))
        return {"entries": entries, "bytes": size, **counts}

    async def cache_counts(self) -> dict[str, float]:
        """Hits, misses and hit ratio only: one HGETALL, no keyspace scan."""
        with _redis_errors():
            counts = await self.redis.hgetall(f"{PREFIX}:cache-stats")
        hits, misses = int(counts.get(b"hit", 0)), int(counts.get(b"miss", 0))
        ratio = hits / (hits + misses) if hits + misses else 0.0
        return {"hits": hits, "misses": misses, "hit_ratio": round(ratio, 4)}

    async def cache_clear(self, model: str | None = None) -> int:
        pattern = f"{PREFIX}:cache:{_glob_escape(model)}:*" if model else f"{PREFIX}:cache:*"
        removed = 0
        with _redis_errors():
            async for key in self.redis.scan_iter(match=pattern, count=500):
                removed += int(await self.redis.unlink(key))
            if model is None:
                await self.redis.delete(f"{PREFIX}:cache-stats")
        return removed

    # ------------------------------------------------------------------ stored responses

    @staticmethod
    def response_key(tenant: str, response_id: str) -> str:
        return f"{PREFIX}:{tenant_tag(tenant)}:resp:{response_id}"

    async def response_put(self, key: str, record: bytes, ttl_s: int) -> None:
        with _redis_errors():
            await self.redis.set(key, record, ex=ttl_s)

    async def response_get(self, key: str) -> bytes | None:
        with _redis_errors():
            return cast(bytes | None, await self.redis.get(key))

    async def response_delete(self, key: str) -> bool:
        with _redis_errors():
            return bool(await self.redis.delete(key))

    # ------------------------------------------------------------------ dashboard activity

    async def activity_push(
        self,
        records: Sequence[bytes],
        minutes: Mapping[int, Mapping[str, int]],
        *,
        keep: int,
        ttl_s: int,
    ) -> None:
        """Recent request records (oldest first) and per-minute sums: one round trip."""
        recent = f"{PREFIX}:recent"
        with _redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                if records:
                    pipe.lpush(recent, *records).ltrim(recent, 0, keep - 1)  # type: ignore[attr-defined]
                for minute, sums in minutes.items():
                    key = f"{PREFIX}:series:{minute}"
                    for field, amount in sums.items():
                        pipe.hincrby(key, field, amount)
                    pipe.expire(key, ttl_s)
                await pipe.execute()

    async def activity_read(
        self, limit: int, minutes: Sequence[int]
    ) -> tuple[list[bytes], list[dict[str, int]]]:
        """The newest `limit` records and each given minute's sums: one round trip."""
        with _redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lrange(f"{PREFIX}:recent", 0, limit - 1)
                for minute in minutes:
                    pipe.hgetall(f"{PREFIX}:series:{minute}")
                replies = await pipe.execute()
        sums = [{k.decode(): int(v) for k, v in reply.items()} for reply in replies[1:]]
        return list(replies[0]), sums

    async def key_usages(
        self, key_ids: Sequence[str], budget_keys: Sequence[str | None]
    ) -> list[tuple[dict[str, int], int | None]]:
        """Per key: its usage counters and what its current budget period used (one trip)."""
        with _redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id, budget_key in zip(key_ids, budget_keys, strict=True):
                    pipe.hgetall(f"{PREFIX}:{key_tag(key_id)}:usage")
                    pipe.get(budget_key or f"{PREFIX}:none")
                replies = await pipe.execute()
        found = []
        for i, budget_key in enumerate(budget_keys):
            usage, spent = replies[2 * i], replies[2 * i + 1]
            counters = {k.decode(): int(v) for k, v in usage.items()}
            found.append((counters, None if budget_key is None else int(spent or 0)))
        return found

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except RedisError:
            return False


_LIVE_FIELDS = ["req", "req_until", "tok", "tok_until"]


def exhausted_ms(live: Sequence[bytes | None], now_ms: int) -> int:
    """From a credential's `live` fields: ms until a limit the provider called spent resets."""
    wait = 0
    for left, until in (live[0:2], live[2:4]):
        if left is not None and until is not None and int(left) <= 0:
            wait = max(wait, int(until) - now_ms)
    return wait


async def _together(writes: list[Coroutine[Any, Any, int]]) -> None:
    """Writes to different slots at once; every one is tried, the first error raised."""
    for outcome in await asyncio.gather(*writes, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
