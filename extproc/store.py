"""The only module that talks to Redis: key names, Lua scripts, one seam.

Routing state (quota windows, cooldowns, circuit breakers) lives here so every
replica agrees. Keys carry hash tags — one per credential, one per target — so a
Redis Cluster keeps each script's keys in one slot. Reads for a routing decision
go out as one pipeline (one round trip); writes are atomic Lua scripts.
Errors are mapped to StoreError; callers decide fail-open or fail-closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import RedisError

PREFIX = "llmux"
WINDOW_S = 60  # quota windows are fixed calendar minutes


class StoreError(Exception):
    """Redis could not be reached or answered with an error."""


def credential_tag(provider: str, credential: str) -> str:
    return f"{{c:{provider}:{credential}}}"


def target_tag(provider: str, upstream_model: str) -> str:
    return f"{{t:{provider}/{upstream_model}}}"


class CredentialState(NamedTuple):
    requests: int  # in the current window
    tokens: int  # in the current window
    cooldown_ms: int  # > 0 while cooling down after a 429


class Reservation(NamedTuple):
    ok: bool
    retry_after_ms: int  # when not ok: how long until it might be


# KEYS: rpm, tpm, cool. ARGV: rpm limit (0 = none), tpm limit (0 = none),
# estimated tokens, window ttl seconds. Returns {ok, retry_after_ms}.
_RESERVE = """
local cool = redis.call('PTTL', KEYS[3])
if cool > 0 then return {0, cool} end
local rpm_limit = tonumber(ARGV[1])
local tpm_limit = tonumber(ARGV[2])
local rpm = tonumber(redis.call('GET', KEYS[1]) or '0')
if rpm_limit > 0 and rpm >= rpm_limit then return {0, -1} end
if tpm_limit > 0 then
  local tpm = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tpm + tonumber(ARGV[3]) > tpm_limit and tpm > 0 then return {0, -1} end
end
if rpm_limit > 0 then
  redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return {1, 0}
"""

# KEYS: tpm. ARGV: tokens, window ttl seconds.
_CHARGE = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n
"""

# KEYS: cooldown key. ARGV: milliseconds. A shorter cooldown never shortens a longer one.
_COOL = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return tonumber(ARGV[1])
end
return left
"""

# KEYS: fail counter, open flag. ARGV: window ms, threshold, open ms.
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  local left = redis.call('PTTL', KEYS[2])
  if left < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class Store:
    """Async Redis access with a bounded pool and short timeouts (never a hang)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 64,
        timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = aioredis.Redis.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=0,
        )
        self.clock = clock
        self._reserve = self.redis.register_script(_RESERVE)
        self._charge = self.redis.register_script(_CHARGE)
        self._cool = self.redis.register_script(_COOL)
        self._fail = self.redis.register_script(_FAIL)

    async def close(self) -> None:
        await self.redis.aclose()

    def window(self) -> tuple[int, int]:
        """(current window id, seconds left in it)."""
        now = self.clock()
        window = int(now // WINDOW_S)
        return window, max(1, int((window + 1) * WINDOW_S - now))

    def keys(self, tag: str, window: int) -> tuple[str, str, str]:
        return (
            f"{PREFIX}:{tag}:rpm:{window}",
            f"{PREFIX}:{tag}:tpm:{window}",
            f"{PREFIX}:{tag}:cool",
        )

    async def routing_state(
        self, credential_tags: Sequence[str], target_tags: Sequence[str]
    ) -> tuple[list[CredentialState], list[int]]:
        """Quota use and cooldowns of credentials, open-breaker ms of targets: one round trip."""
        window, _ = self.window()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for tag in credential_tags:
                    rpm, tpm, cool = self.keys(tag, window)
                    pipe.get(rpm).get(tpm).pttl(cool)
                for tag in target_tags:
                    pipe.pttl(f"{PREFIX}:{tag}:open")
                replies = await pipe.execute()
        except RedisError as exc:
            raise StoreError(str(exc)) from exc
        states = [
            CredentialState(int(replies[i] or 0), int(replies[i + 1] or 0), max(0, replies[i + 2]))
            for i in range(0, 3 * len(credential_tags), 3)
        ]
        opened = [max(0, int(ms)) for ms in replies[3 * len(credential_tags) :]]
        return states, opened

    async def reserve(
        self, tag: str, rpm: int | None, tpm: int | None, estimate: int
    ) -> Reservation:
        window, ttl = self.window()
        try:
            ok, retry_ms = await self._reserve(
                keys=self.keys(tag, window), args=[rpm or 0, tpm or 0, estimate, ttl + 60]
            )
        except RedisError as exc:
            raise StoreError(str(exc)) from exc
        if int(retry_ms) < 0:
            retry_ms = ttl * 1000
        return Reservation(bool(ok), int(retry_ms))

    async def charge_tokens(self, tag: str, tokens: int, window: int | None = None) -> int:
        current, ttl = self.window()
        _, tpm, _ = self.keys(tag, current if window is None else window)
        try:
            return int(await self._charge(keys=[tpm], args=[tokens, ttl + 60]))
        except RedisError as exc:
            raise StoreError(str(exc)) from exc

    async def cool_down(self, tag: str, milliseconds: int) -> int:
        try:
            return int(await self._cool(keys=[f"{PREFIX}:{tag}:cool"], args=[milliseconds]))
        except RedisError as exc:
            raise StoreError(str(exc)) from exc

    async def record_failure(
        self, tag: str, *, window_ms: int, threshold: int, open_ms: int
    ) -> bool:
        """Count a failure of a target; True when its circuit breaker (re)opened."""
        keys = [f"{PREFIX}:{tag}:fail", f"{PREFIX}:{tag}:open"]
        try:
            return bool(await self._fail(keys=keys, args=[window_ms, threshold, open_ms]))
        except RedisError as exc:
            raise StoreError(str(exc)) from exc

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except RedisError:
            return False
