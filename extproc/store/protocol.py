"""What the phases, the admin API and the dashboard may ask of the shared state store.

`Store` is the seam: `RedisStore` implements it over Redis/Valkey, and the tests'
in-memory fake implements it too (one contract test runs the same cases on both).
This module owns the store's value types and its one error; it does no I/O.
Callers catch `StoreError` and decide fail-open or fail-closed (`store.on_error`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

from extproc.decisions.provider_limits import ProviderLimits
from extproc.decisions.routing import CredentialState
from extproc.decisions.strategy import TargetLoad

WINDOW_S = 60  # quota windows are fixed calendar minutes
LATENCY_TTL_S = 86400  # a target unused for a day starts its average afresh
LatencyKind = Literal["ttft", "total"]  # streams' time to first token; whole responses' time


class StoreError(Exception):
    """The store could not be reached or answered with an error."""


class RequestState(NamedTuple):
    credentials: list[CredentialState]
    opened_ms: list[int]  # per target: > 0 while its circuit breaker is open
    cached: bytes | None  # the cache entry, when a key was given and found
    budget_used: int  # tokens the virtual key used in its budget period (0 without one)


class Reservation(NamedTuple):
    ok: bool
    retry_after_ms: int  # when not ok: how long until it might be
    requests: int = 0  # requests counted in the window, this one included (rate-limit headers)
    tokens: int = 0  # tokens charged in the window so far


class SpendReservation(NamedTuple):
    ok: bool
    spent: int  # nano-dollars the period has spent or reserved, this reservation included


def quota_window(now: float) -> tuple[int, int]:
    """(the window id at `now`, whole seconds left in it, at least 1)."""
    window = int(now // WINDOW_S)
    return window, max(1, int((window + 1) * WINDOW_S - now))


class RoutingState(Protocol):
    """Quota windows, cooldowns and circuit breakers, shared by every replica."""

    def window(self) -> tuple[int, int]:
        """(current window id, seconds left in it)."""
        ...

    async def request_state(
        self,
        credential_tags: Sequence[str],
        target_tags: Sequence[str],
        cache_key: str | None,
        budget_key: str | None = None,
    ) -> RequestState:
        """Quota use, cooldowns, open breakers, the cache entry and budget use at once."""
        ...

    async def reserve(
        self, tag: str, rpm: int | None, tpm: int | None, estimate: int
    ) -> Reservation:
        """Count one request against `tag`'s quota unless it is spent or cooling down."""
        ...

    async def charge_tokens(self, tag: str, tokens: int, window: int | None = None) -> int:
        """Add tokens to `tag`'s window (the current one by default); the new total."""
        ...

    async def reset_credential(self, tag: str) -> int:
        """Forget a credential's counters and cooldown (the current window's)."""
        ...

    async def cool_down(self, tag: str, milliseconds: int) -> int:
        """Cool `tag` down; a shorter cooldown never shortens a longer one. Ms left."""
        ...

    async def record_failure(
        self, tag: str, *, window_ms: int, threshold: int, open_ms: int
    ) -> bool:
        """Count a failure of a target; True when its circuit breaker (re)opened."""
        ...

    async def note_provider_limits(self, tag: str, limits: ProviderLimits) -> None:
        """What a provider's rate-limit headers said of a credential, kept until the resets.

        A limit said to be exhausted makes the credential ineligible (`exhausted_ms` in
        request_state) and refused by `reserve` until its reset.
        """
        ...


class StrategyState(Protocol):
    """What routing strategies share across replicas (decisions/strategy.py)."""

    async def next_turn(self, tag: str) -> int:
        """A model's round-robin counter: 0, 1, 2, ... across every replica."""
        ...

    async def busy_start(self, tag: str, attempt_id: str, lease_ms: int) -> int:
        """One more attempt in flight on a target (until busy_end or the lease ends)."""
        ...

    async def busy_end(self, tag: str, attempt_id: str) -> None: ...

    async def record_latency(self, tag: str, kind: LatencyKind, ms: float) -> float:
        """Fold a latency sample into the target's moving average; the new average."""
        ...

    async def target_loads(self, target_tags: Sequence[str]) -> list[TargetLoad]:
        """Per target: attempts in flight and latency averages, in one round trip."""
        ...


class KeyRecords(Protocol):
    """Virtual keys' records (by the secret's hash and by id), usage and budgets."""

    async def key_by_hash(self, hashed: str) -> bytes | None: ...

    async def key_by_id(self, key_id: str) -> bytes | None: ...

    async def keys_by_ids(self, key_ids: Sequence[str]) -> list[bytes | None]: ...

    async def key_save(self, key_id: str, hashed: str, record: bytes) -> None:
        """Save a record under its hash and its id, all or nothing."""
        ...

    async def key_ids(self) -> list[str]:
        """Every saved key's id, sorted."""
        ...

    def budget_key(self, key_id: str, period: str) -> str: ...

    async def record_usage(
        self,
        key_id: str | None,
        tenant: str | None,
        budget: tuple[str, int] | None,
        usage: dict[str, int],
    ) -> None:
        """Add a request's usage to its key (and budget period) and its tenant."""
        ...

    async def usage(self, kind: str, name: str) -> dict[str, int]:
        """A key's (`kind` "key") or a tenant's usage counters."""
        ...

    async def key_usages(
        self, key_ids: Sequence[str], budget_keys: Sequence[str | None]
    ) -> list[tuple[dict[str, int], int | None]]:
        """Per key: its usage counters and what its budget period used (None: no budget)."""
        ...


class CostLedger(Protocol):
    """Money: budgets' reservations in nano-dollars, and cost per provider and model.

    Per key and tenant, cost is a usage counter (`record_usage`'s `cost_nano_usd`).
    """

    def spend_key(self, kind: str, name: str, period: str) -> str:
        """Where a key's (`kind` "key") or a tenant's money budget period counts what it
        spent and reserved."""
        ...

    async def reserve_spend(
        self, spend_key: str, limit: int, estimate: int, ttl_s: int
    ) -> SpendReservation:
        """Add `estimate` unless the period already spent `limit`: one atomic step.

        The last request admitted may cross the limit, so N concurrent requests from
        every replica overshoot by at most one estimate (plus what answers cost beyond
        their estimates).
        """
        ...

    async def settle_spend(self, spend_key: str, delta: int, ttl_s: int) -> int:
        """Adjust a reservation by (actual - estimate); the period's new total."""
        ...

    async def spends(self, spend_keys: Sequence[str | None]) -> list[int | None]:
        """What each period spent and reserved (None where no key is given)."""
        ...

    async def record_cost(self, provider: str, model: str, nano: int) -> None:
        """Add one attempt's cost to its provider's and its (upstream) model's totals."""
        ...

    async def costs(self) -> dict[str, dict[str, int]]:
        """Nano-dollars per provider (`providers`) and per model (`models`)."""
        ...


class CacheEntries(Protocol):
    """The response cache's entries and hit/miss counters."""

    def cache_key(self, model: str, digest: str) -> str: ...

    async def cache_put(self, key: str, data: bytes, ttl_s: int) -> None: ...

    async def cache_count(self, outcome: str) -> None: ...

    async def cache_stats(self) -> dict[str, float]:
        """Entries, bytes, hits, misses, hit ratio."""
        ...

    async def cache_counts(self) -> dict[str, float]:
        """Hits, misses and hit ratio only."""
        ...

    async def cache_clear(self, model: str | None = None) -> int:
        """Remove one model's entries (every entry and the counters without one)."""
        ...


class StoredResponses(Protocol):
    """Responses API conversation state: one record per stored response, per tenant."""

    def response_key(self, tenant: str, response_id: str) -> str:
        """The record's key, hash-tagged by tenant: another tenant's id names another key."""
        ...

    async def response_put(self, key: str, record: bytes, ttl_s: int) -> None: ...

    async def response_get(self, key: str) -> bytes | None: ...

    async def response_delete(self, key: str) -> bool:
        """True when the record existed."""
        ...


class ActivityLog(Protocol):
    """The dashboard's recent requests and per-minute sums."""

    async def activity_push(
        self,
        records: Sequence[bytes],
        minutes: Mapping[int, Mapping[str, int]],
        *,
        keep: int,
        ttl_s: int,
    ) -> None:
        """Prepend records (oldest first), keep the newest `keep`; add to minutes' sums."""
        ...

    async def activity_read(
        self, limit: int, minutes: Sequence[int]
    ) -> tuple[list[bytes], list[dict[str, int]]]:
        """The newest `limit` records and each given minute's sums."""
        ...


class Store(
    RoutingState,
    StrategyState,
    KeyRecords,
    CostLedger,
    CacheEntries,
    StoredResponses,
    ActivityLog,
    Protocol,
):
    """Everything above, plus health and shutdown."""

    async def ping(self) -> bool:
        """True when the store answers (never raises)."""
        ...

    async def close(self) -> None: ...
