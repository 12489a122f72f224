"""An in-memory `Store` for unit tests: the answers `RedisStore` gives, without a server.

Time is the injected clock, so windows roll over, and cooldowns, breakers and cache
entries expire, when a test advances it. `failing = True` makes every call raise
StoreError (and `ping` answer False), as an unreachable Redis does.
tests/unit/test_store_contract.py runs the same cases on this and on a real Valkey,
so the two cannot drift: change both together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from extproc.decisions.keys import key_tag, tenant_tag
from extproc.decisions.provider_limits import DEFAULT_RESET_MS, ProviderLimits
from extproc.decisions.routing import CredentialState
from extproc.decisions.strategy import TargetLoad, ewma
from extproc.store.protocol import (
    LATENCY_TTL_S,
    LatencyKind,
    RequestState,
    Reservation,
    SpendReservation,
    StoreError,
    quota_window,
)


class _Expiring:
    """Values with optional deadlines on the clock, as Redis keys with a TTL."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._values: dict[str, Any] = {}
        self._deadlines: dict[str, float] = {}

    def get(self, key: str, default: Any = None) -> Any:
        deadline = self._deadlines.get(key)
        if deadline is not None and deadline <= self._clock():
            self.delete(key)
        return self._values.get(key, default)

    def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Like SET: a new value and a new TTL (none unless given)."""
        self._values[key] = value
        self._deadlines.pop(key, None)
        if ttl_s is not None:
            self.expire(key, ttl_s)

    def keep(self, key: str, value: Any) -> None:
        """Like INCR or HINCRBY: a new value, the TTL kept."""
        self.get(key)  # drop it first when it expired
        self._values[key] = value

    def expire(self, key: str, ttl_s: float) -> None:
        self._deadlines[key] = self._clock() + ttl_s

    def ttl_ms(self, key: str) -> int:
        """Milliseconds left; 0 when the key is missing or has no TTL."""
        if self.get(key) is None or key not in self._deadlines:
            return 0
        return round((self._deadlines[key] - self._clock()) * 1000)

    def delete(self, key: str) -> bool:
        self._deadlines.pop(key, None)
        return self._values.pop(key, None) is not None

    def names(self, prefix: str) -> list[str]:
        return [k for k in list(self._values) if k.startswith(prefix) and self.get(k) is not None]


class MemoryStore:
    """The `Store` Protocol (extproc/store/protocol.py) in one process's memory."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.failing = False
        self._data = _Expiring(clock)

    def _check(self) -> _Expiring:
        if self.failing:
            raise StoreError("the in-memory store is failing (as asked)")
        return self._data

    def _incr(self, key: str, amount: int) -> int:
        total = int(self._check().get(key, 0)) + amount
        self._data.keep(key, total)
        return total

    def _hincr(self, key: str, counts: Mapping[str, int]) -> None:
        table = dict(self._check().get(key, {}))
        for field, amount in counts.items():
            table[field] = table.get(field, 0) + amount
        self._data.keep(key, table)

    # ------------------------------------------------------------------ routing state

    def window(self) -> tuple[int, int]:
        return quota_window(self.clock())

    async def request_state(
        self,
        credential_tags: Sequence[str],
        target_tags: Sequence[str],
        cache_key: str | None,
        budget_key: str | None = None,
    ) -> RequestState:
        data, (window, _) = self._check(), self.window()
        states = [
            CredentialState(
                int(data.get(f"{tag}:rpm:{window}", 0)),
                int(data.get(f"{tag}:tpm:{window}", 0)),
                data.ttl_ms(f"{tag}:cool"),
                self._exhausted_ms(tag),
            )
            for tag in credential_tags
        ]
        opened = [data.ttl_ms(f"{tag}:open") for tag in target_tags]
        cached = None if cache_key is None else data.get(cache_key)
        budget = 0 if budget_key is None else int(data.get(budget_key, 0))
        return RequestState(states, opened, cached, budget)

    async def reserve(
        self, tag: str, rpm: int | None, tpm: int | None, estimate: int
    ) -> Reservation:
        data, (window, ttl) = self._check(), self.window()
        cooling = data.ttl_ms(f"{tag}:cool")
        if cooling > 0:
            return Reservation(False, cooling)
        exhausted = self._exhausted_ms(tag)
        if exhausted > 0:
            return Reservation(False, exhausted)
        requests = int(data.get(f"{tag}:rpm:{window}", 0))
        tokens = int(data.get(f"{tag}:tpm:{window}", 0))
        if rpm and requests >= rpm:
            return Reservation(False, ttl * 1000, requests, tokens)
        if tpm and tokens > 0 and tokens + estimate > tpm:
            return Reservation(False, ttl * 1000, requests, tokens)
        if rpm:
            requests = self._incr(f"{tag}:rpm:{window}", 1)
            data.expire(f"{tag}:rpm:{window}", ttl + 60)
        live = dict(data.get(f"{tag}:live", {}))
        if "req" in live and live["req_until"] > self._now_ms():
            live["req"] -= 1
            data.keep(f"{tag}:live", live)
        return Reservation(True, 0, requests, tokens)

    async def charge_tokens(self, tag: str, tokens: int, window: int | None = None) -> int:
        current, ttl = self.window()
        key = f"{tag}:tpm:{current if window is None else window}"
        total = self._incr(key, tokens)
        self._data.expire(key, ttl + 60)
        return total

    async def reset_credential(self, tag: str) -> int:
        window, _ = self.window()
        names = (f"{tag}:rpm:{window}", f"{tag}:tpm:{window}", f"{tag}:cool", f"{tag}:live")
        data = self._check()
        return sum(data.get(n) is not None and data.delete(n) for n in names)

    async def cool_down(self, tag: str, milliseconds: int) -> int:
        data = self._check()
        left = data.ttl_ms(f"{tag}:cool")
        if left >= milliseconds:
            return left
        data.set(f"{tag}:cool", 1, milliseconds / 1000)
        return milliseconds

    async def record_failure(
        self, tag: str, *, window_ms: int, threshold: int, open_ms: int
    ) -> bool:
        failures = self._incr(f"{tag}:fail", 1)
        if failures == 1:
            self._data.expire(f"{tag}:fail", window_ms / 1000)
        if failures < threshold:
            return False
        if self._data.ttl_ms(f"{tag}:open") < open_ms:
            self._data.set(f"{tag}:open", 1, open_ms / 1000)
        self._data.delete(f"{tag}:fail")
        return True

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _exhausted_ms(self, tag: str) -> int:
        live, now, wait = self._data.get(f"{tag}:live", {}), self._now_ms(), 0
        for kind in ("req", "tok"):
            if kind in live and live[kind] <= 0:
                wait = max(wait, live[f"{kind}_until"] - now)
        return wait

    async def note_provider_limits(self, tag: str, limits: ProviderLimits) -> None:
        data, now = self._check(), self._now_ms()
        live = dict(data.get(f"{tag}:live", {}))
        for kind, left, reset in (
            ("req", limits.requests_remaining, limits.requests_reset_ms),
            ("tok", limits.tokens_remaining, limits.tokens_reset_ms),
        ):
            if left is not None:
                live[kind] = left
                live[f"{kind}_until"] = now + (reset or DEFAULT_RESET_MS)
        last = max(live.get("req_until", 0), live.get("tok_until", 0))
        if last > now:
            data.set(f"{tag}:live", live, (last - now) / 1000)
        else:
            data.delete(f"{tag}:live")

    # ------------------------------------------------------------------ strategies

    async def next_turn(self, tag: str) -> int:
        return self._incr(f"{tag}:turn", 1) - 1

    async def busy_start(self, tag: str, attempt_id: str, lease_ms: int) -> int:
        data, now = self._check(), self._now_ms()
        leases = {k: v for k, v in data.get(f"{tag}:busy", {}).items() if v > now}
        leases[attempt_id] = now + lease_ms
        data.set(f"{tag}:busy", leases, lease_ms / 1000)
        return len(leases)

    async def busy_end(self, tag: str, attempt_id: str) -> None:
        leases = dict(self._check().get(f"{tag}:busy", {}))
        if leases.pop(attempt_id, None) is not None:
            self._data.keep(f"{tag}:busy", leases)

    async def record_latency(self, tag: str, kind: LatencyKind, ms: float) -> float:
        averages = dict(self._check().get(f"{tag}:latency", {}))
        averages[kind] = ewma(averages.get(kind), ms)
        self._data.set(f"{tag}:latency", averages, LATENCY_TTL_S)
        return float(averages[kind])

    async def target_loads(self, target_tags: Sequence[str]) -> list[TargetLoad]:
        data, now = self._check(), self._now_ms()
        loads = []
        for tag in target_tags:
            busy = sum(1 for v in data.get(f"{tag}:busy", {}).values() if v > now)
            averages = data.get(f"{tag}:latency", {})
            loads.append(TargetLoad(busy, averages.get("ttft"), averages.get("total")))
        return loads

    # ------------------------------------------------------------------ virtual keys

    async def key_by_hash(self, hashed: str) -> bytes | None:
        record: bytes | None = self._check().get(f"vkey:{hashed}")
        return record

    async def key_by_id(self, key_id: str) -> bytes | None:
        return (await self.keys_by_ids([key_id]))[0]

    async def keys_by_ids(self, key_ids: Sequence[str]) -> list[bytes | None]:
        data = self._check()
        hashes = [data.get(f"vkey-id:{key_id}") for key_id in key_ids]
        return [None if h is None else data.get(f"vkey:{h}") for h in hashes]

    async def key_save(self, key_id: str, hashed: str, record: bytes) -> None:
        data = self._check()
        data.set(f"vkey:{hashed}", record)
        data.set(f"vkey-id:{key_id}", hashed)
        data.set("vkeys", data.get("vkeys", frozenset()) | {key_id})

    async def key_ids(self) -> list[str]:
        return sorted(self._check().get("vkeys", frozenset()))

    def budget_key(self, key_id: str, period: str) -> str:
        return f"{key_tag(key_id)}:budget:{period}"

    async def record_usage(
        self,
        key_id: str | None,
        tenant: str | None,
        budget: tuple[str, int] | None,
        usage: dict[str, int],
    ) -> None:
        self._check()
        if key_id is not None:
            self._hincr(f"{key_tag(key_id)}:usage", usage)
            if budget is not None:
                budget_key, ttl = budget
                self._incr(budget_key, usage.get("input_tokens", 0) + usage.get("output_tokens", 0))
                self._data.expire(budget_key, ttl + 86400)
        if tenant is not None:
            self._hincr(f"{tenant_tag(tenant)}:usage", usage)

    async def usage(self, kind: str, name: str) -> dict[str, int]:
        tag = key_tag(name) if kind == "key" else tenant_tag(name)
        return dict(self._check().get(f"{tag}:usage", {}))

    async def key_usages(
        self, key_ids: Sequence[str], budget_keys: Sequence[str | None]
    ) -> list[tuple[dict[str, int], int | None]]:
        data = self._check()
        return [
            (await self.usage("key", key_id), None if bk is None else int(data.get(bk, 0)))
            for key_id, bk in zip(key_ids, budget_keys, strict=True)
        ]

    # ------------------------------------------------------------------ cost ledger

    def spend_key(self, kind: str, name: str, period: str) -> str:
        tag = key_tag(name) if kind == "key" else tenant_tag(name)
        return f"{tag}:spend:{period}"

    async def reserve_spend(
        self, spend_key: str, limit: int, estimate: int, ttl_s: int
    ) -> SpendReservation:
        spent = int(self._check().get(spend_key, 0))
        if spent >= limit:
            return SpendReservation(False, spent)
        spent = self._incr(spend_key, estimate)
        self._data.expire(spend_key, ttl_s + 86400)
        return SpendReservation(True, spent)

    async def settle_spend(self, spend_key: str, delta: int, ttl_s: int) -> int:
        spent = self._incr(spend_key, delta)
        self._data.expire(spend_key, ttl_s + 86400)
        return spent

    async def spends(self, spend_keys: Sequence[str | None]) -> list[int | None]:
        data = self._check()
        return [None if key is None else int(data.get(key, 0)) for key in spend_keys]

    async def record_cost(self, provider: str, model: str, nano: int) -> None:
        self._hincr("cost:providers", {provider: nano})
        self._hincr("cost:models", {model: nano})

    async def costs(self) -> dict[str, dict[str, int]]:
        data = self._check()
        return {
            "providers": dict(data.get("cost:providers", {})),
            "models": dict(data.get("cost:models", {})),
        }

    # ------------------------------------------------------------------ stored responses

    def response_key(self, tenant: str, response_id: str) -> str:
        return f"{tenant_tag(tenant)}:resp:{response_id}"

    async def response_put(self, key: str, record: bytes, ttl_s: int) -> None:
        self._check().set(key, record, ttl_s)

    async def response_get(self, key: str) -> bytes | None:
        found: bytes | None = self._check().get(key)
        return found

    async def response_delete(self, key: str) -> bool:
        data = self._check()
        data.get(key)  # an expired record is already gone
        return data.delete(key)

    # ------------------------------------------------------------------ cache

    def cache_key(self, model: str, digest: str) -> str:
        return f"cache:{model}:{digest}"

    async def cache_put(self, key: str, data: bytes, ttl_s: int) -> None:
        self._check().set(key, data, ttl_s)

    async def cache_count(self, outcome: str) -> None:
        self._hincr("cache-stats", {outcome: 1})

    async def cache_stats(self) -> dict[str, float]:
        counts = await self.cache_counts()
        entries = [self._data.get(k) for k in self._data.names("cache:")]
        return {"entries": len(entries), "bytes": sum(map(len, entries)), **counts}

    async def cache_counts(self) -> dict[str, float]:
        counts = self._check().get("cache-stats", {})
        hits, misses = counts.get("hit", 0), counts.get("miss", 0)
        ratio = hits / (hits + misses) if hits + misses else 0.0
        return {"hits": hits, "misses": misses, "hit_ratio": round(ratio, 4)}

    async def cache_clear(self, model: str | None = None) -> int:
        data = self._check()
        removed = sum(data.delete(k) for k in data.names(f"cache:{model}:" if model else "cache:"))
        if model is None:
            data.delete("cache-stats")
        return removed

    # ------------------------------------------------------------------ dashboard activity

    async def activity_push(
        self,
        records: Sequence[bytes],
        minutes: Mapping[int, Mapping[str, int]],
        *,
        keep: int,
        ttl_s: int,
    ) -> None:
        data = self._check()
        if records:  # LPUSH puts the last record first
            data.keep("recent", [*reversed(records), *data.get("recent", [])][:keep])
        for minute, sums in minutes.items():
            self._hincr(f"series:{minute}", sums)
            data.expire(f"series:{minute}", ttl_s)

    async def activity_read(
        self, limit: int, minutes: Sequence[int]
    ) -> tuple[list[bytes], list[dict[str, int]]]:
        data = self._check()
        sums = [dict(data.get(f"series:{minute}", {})) for minute in minutes]
        return list(data.get("recent", []))[:limit], sums

    # ------------------------------------------------------------------ health

    async def ping(self) -> bool:
        return not self.failing

    async def close(self) -> None:
        pass
