"""Accounting writes counted once through a failover: the marker shares its counter's
slot, and `retried` sends a call again only on failover errors, and not forever."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from extproc.store.once import marker, retried


@pytest.mark.parametrize(
    "key",
    ["llmux:{k:key_1}:usage", "llmux:{tenant:acme}:spend:202701", "llmux:cost:models", "a{b"],
)
def test_the_marker_lives_in_its_counters_slot(key: str) -> None:
    found = marker(key, "abc123")
    assert key_slot(found.encode()) == key_slot(key.encode())
    assert found.endswith(":once:abc123")


def test_a_key_no_marker_can_share_a_slot_with_is_refused() -> None:
    with pytest.raises(ValueError, match="no marker"):
        marker("x{}y", "abc123")  # an empty tag: Redis hashes the whole name


def test_failover_errors_are_retried_until_the_call_lands() -> None:
    errors = [RedisConnectionError("gone"), ReadOnlyError("replica"), None]
    calls = []

    async def call() -> int:
        calls.append(1)
        error = errors.pop(0)
        if error is not None:
            raise error
        return 7

    async def no_wait(_: float) -> None:
        pass

    assert asyncio.run(retried(call, sleep=no_wait)) == 7
    assert len(calls) == 3


def test_other_errors_and_a_long_outage_are_raised() -> None:
    async def wrong_type() -> int:
        raise ResponseError("WRONGTYPE")

    async def down() -> int:
        raise RedisConnectionError("refused")

    with pytest.raises(ResponseError):
        asyncio.run(retried(wrong_type))
    with pytest.raises(RedisConnectionError):
        asyncio.run(retried(down, for_s=0.2))


def test_an_attribute_error_is_retried_only_when_redis_py_raised_it() -> None:
    """redis-py 8's Cluster client may write to a connection it just closed (None._writer)."""
    namespace: dict[str, object] = {}
    exec(
        compile("def lost():\n    None.writelines", "/site/redis/connection.py", "exec"), namespace
    )
    attempts = []

    async def flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            namespace["lost"]()  # type: ignore[operator]
        return 1

    async def ours() -> int:
        raise AttributeError("a bug of ours")

    async def no_wait(_: float) -> None:
        pass

    assert asyncio.run(retried(flaky, sleep=no_wait)) == 1 and len(attempts) == 2
    with pytest.raises(AttributeError, match="a bug of ours"):
        asyncio.run(retried(ours, sleep=no_wait))
