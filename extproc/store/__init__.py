"""The only Redis client: key names, Lua scripts, and the errors mapped to StoreError.
The `Store` Protocol (protocol.py) is what the phases depend on; RedisStore implements it.

Owns the shared state every replica agrees on: quota windows, cooldowns, circuit
breakers, providers' own limits, the strategies' turns, in-flight counts and latency
averages, virtual keys, usage, money budgets and cost, cache entries, dashboard
activity. Decides nothing; callers choose fail-open or fail-closed on a StoreError.
"""

from extproc.store.protocol import (
    RequestState,
    Reservation,
    SpendReservation,
    Store,
    StoreError,
)
from extproc.store.redis_store import RedisStore

__all__ = [
    "RedisStore",
    "RequestState",
    "Reservation",
    "SpendReservation",
    "Store",
    "StoreError",
]
