"""Recent requests and per-minute totals for the admin dashboard.

Every finished client request is handed here once (`Telemetry.request_log`) and costs a
list append: no Redis, no lock, no encoding on the request path. A background task per
worker process flushes every second in one pipeline: the newest records onto a capped
Redis list, per-minute sums into hashes that expire after a day. Workers share nothing in
memory, so the admin API (answered by whichever worker gets the call) reads it all back
from Redis. Records carry what the request log carries — key ids, never keys or bodies.
A store error loses that second's batch and is counted: the dashboard is best effort and
must never slow down or fail a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import orjson

from extproc.store import Store, StoreError
from extproc.telemetry.record import RequestRecord

log = logging.getLogger("llmux.activity")

RECENT = 200  # records kept in Redis, all workers together
MAX_PENDING = 10_000  # per worker between two flushes; more are dropped and counted
SERIES_TTL_S = 25 * 3600
MAX_MINUTES = 24 * 60
SERIES_FIELDS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_hits",
    "cost_nano_usd",  # summed as integers: the series adds up like the ledger
)


class Activity:
    """One worker's requests since the last flush, and the task that flushes them."""

    def __init__(self, clock: Callable[[], float] = time.time, interval_s: float = 1.0) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self.pending: list[RequestRecord] = []
        self.dropped = 0  # records lost: too many between flushes, or the store failed
        self.flush_errors = 0
        self._task: asyncio.Task[None] | None = None
        self._store: Store | None = None

    def record(self, record: RequestRecord) -> None:
        """A finished request (the request path: keep this an append)."""
        if len(self.pending) < MAX_PENDING:
            record.ts = self.clock()
            self.pending.append(record)
        else:
            self.dropped += 1

    def start(self, store: Store | None) -> None:
        """Flush every `interval_s` from now on (nothing to do without a store)."""
        if store is None or self._task is not None:
            return
        self._store = store
        self._task = asyncio.get_running_loop().create_task(self._run(store))

    async def close(self) -> None:
        """Stop flushing; what is pending goes out once more."""
        if self._task is None or self._store is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self.flush(self._store)

    async def _run(self, store: Store) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush(store)

    async def flush(self, store: Store) -> bool:
        """Send what is pending in one round trip; False (batch dropped) on a store error."""
        batch, self.pending = self.pending, []
        if not batch:
            return True
        records = [_encode(r) for r in batch[-RECENT:]]
        try:
            await store.activity_push(records, minute_sums(batch), keep=RECENT, ttl_s=SERIES_TTL_S)
        except StoreError as exc:
            if not self.flush_errors:
                log.warning("dashboard activity not saved (store error): %s", exc)
            self.flush_errors += 1
            self.dropped += len(batch)
            return False
        return True


_encode = msgspec.json.Encoder().encode


def minute_of(ts: float) -> int:
    """The start of ts's calendar minute, in unix seconds."""
    return int(ts // 60) * 60


def minute_sums(records: Iterable[RequestRecord]) -> dict[int, dict[str, int]]:
    """Requests, errors (status >= 400), tokens, cache hits and cost per calendar minute."""
    sums: dict[int, dict[str, int]] = {}
    for record in records:
        minute = minute_of(record.ts or 0.0)  # Activity.record stamps every record
        total = sums.get(minute)
        if total is None:
            total = sums[minute] = dict.fromkeys(SERIES_FIELDS, 0)
        total["requests"] += 1
        total["errors"] += int(record.status >= 400)
        total["input_tokens"] += record.input_tokens or 0
        total["output_tokens"] += record.output_tokens or 0
        total["cache_hits"] += int(record.cache == "hit")
        total["cost_nano_usd"] += round((record.cost_usd or 0.0) * 1e9)
    return {m: {k: v for k, v in total.items() if v} for m, total in sums.items()}


async def read(store: Store, minutes: int, now: float) -> dict[str, Any]:
    """The admin view: recent records (newest first) and `minutes` of per-minute sums.

    Minutes without traffic are filled with zeros, so the series has no gaps.
    """
    minutes = max(1, min(minutes, MAX_MINUTES))
    last = minute_of(now)
    starts = [last - 60 * i for i in range(minutes - 1, -1, -1)]
    raw, sums = await store.activity_read(RECENT, starts)
    recent = []
    for item in raw:
        with contextlib.suppress(orjson.JSONDecodeError):
            record = orjson.loads(item)
            if isinstance(record, dict):
                recent.append(record)
    # Each worker pushes its own batches: order the merged list by time, not by push.
    recent.sort(key=lambda r: r.get("ts") or 0, reverse=True)
    series = [
        {"minute": start, **{field: total.get(field, 0) for field in SERIES_FIELDS}}
        for start, total in zip(starts, sums, strict=True)
    ]
    return {"recent": recent, "series": series}
