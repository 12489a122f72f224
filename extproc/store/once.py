"""Counting usage and money once, across a failover.

A write in flight when a primary dies may have landed (and reached the replica that
takes over) or not; the client cannot tell. Accounting writes therefore carry a
marker written in the same script and slot (scripts.ADD_ONCE): sending the same call
again after the failover adds nothing twice. `retried` sends it again until it lands
or `RETRY_FOR_S` passes, so usage charged in the background survives a failover.
Decides nothing about fail-open/closed; raises the last RedisError when it gives up.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RETRY_FOR_S = 10.0  # longer than a Sentinel or Cluster failover with default timeouts
MARKER_TTL_MS = 60_000  # longer than any retry, so a late repeat still finds its marker
# What a failover or a restart looks like from the client: the node is gone, a
# replica not yet promoted refuses writes, the cluster is between two slot maps.
FAILOVER_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    ReadOnlyError,
    TryAgainError,
    SlotNotCoveredError,
)

LOST_CONNECTION = (AttributeError, RuntimeError)  # see raised_by_redis_py

T = TypeVar("T")


class Increment(NamedTuple):
    key: str
    field: str  # a hash's field; "" for a plain counter
    amount: int
    ttl_s: int = 0  # 0: keep the key's ttl


def raised_by_redis_py(exc: BaseException) -> bool:
    """An AttributeError or RuntimeError from inside redis-py: its Cluster client (8.x)
    closes a node's busy connections when one call times out, and a call then writes to
    the closed one (`None.writelines`, or "the handler is closed" on uvloop). That is a
    lost connection, not a bug of ours."""
    if not isinstance(exc, LOST_CONNECTION):
        return False
    frame = exc.__traceback__
    while frame is not None:
        if f"{os.sep}redis{os.sep}" in frame.tb_frame.f_code.co_filename:
            return True
        frame = frame.tb_next
    return False


def marker(key: str, token: str) -> str:
    """The once-marker of a call whose first counter is `key`, in `key`'s slot."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start >= 0 and end > start + 1:
        return f"{key[: end + 1]}:once:{token}"
    if "}" in key:  # `{key}` would end its tag early: no marker name shares the slot
        raise ValueError(f"no marker can share the slot of {key!r}")
    return f"{{{key}}}:once:{token}"  # a key without a tag hashes whole: tag it with itself


async def retried(
    call: Callable[[], Awaitable[T]],
    *,
    for_s: float = RETRY_FOR_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`call()` again after failover errors, backing off, until it lands or `for_s` passes."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + for_s, 0.05
    while True:
        try:
            return await call()
        except (*FAILOVER_ERRORS, *LOST_CONNECTION) as exc:
            if isinstance(exc, LOST_CONNECTION) and not raised_by_redis_py(exc):
                raise
            if loop.time() >= deadline:
                raise
            await sleep(pause)
            pause = min(pause * 2, 1.0)
