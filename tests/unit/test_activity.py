"""The dashboard's activity: per-minute sums, batched flushes to a real Valkey, read-back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import orjson
import pytest
import redis

from extproc.config.settings import Telemetry as TelemetryConfig
from extproc.run.children import free_port
from extproc.store import RedisStore, Store
from extproc.telemetry import activity
from extproc.telemetry.activity import RECENT, Activity, minute_sums
from extproc.telemetry.core import Telemetry
from extproc.telemetry.record import RequestRecord
from tests.harness import Valkey

T = TypeVar("T")
MINUTE = 1_800_000_000 - 1_800_000_000 % 60  # a calendar minute's start, in unix seconds


def with_store(url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = RedisStore(url, timeout_s=0.5)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def request(ts: float | None = None, **fields: Any) -> RequestRecord:
    defaults = {"client_api": "openai", "model": "gpt-4o-mini", "provider": "openai"}
    return RequestRecord(**{**defaults, "status": 200, "duration_ms": 1.0, "ts": ts, **fields})


def test_minute_sums_count_requests_errors_tokens_and_hits() -> None:
    records = [
        request(MINUTE + 1, input_tokens=10, output_tokens=20, cost_usd=0.000012345),
        request(MINUTE + 59.9, status=429, input_tokens=None, key_id="key_1", cost_usd=0.0),
        request(MINUTE + 60, provider="cache", cache="hit"),
        request(MINUTE + 61, status=502, input_tokens=3, output_tokens=0),
    ]
    assert minute_sums(records) == {
        MINUTE: {
            "requests": 2,
            "errors": 1,
            "input_tokens": 10,
            "output_tokens": 20,
            "cost_nano_usd": 12345,
        },
        MINUTE + 60: {"requests": 2, "errors": 1, "input_tokens": 3, "cache_hits": 1},
    }


def test_a_flush_pushes_records_and_sums_and_reads_back(valkey: Valkey, db: redis.Redis) -> None:
    clock = iter(MINUTE + i for i in range(RECENT + 5)).__next__
    recorder = Activity(clock=clock)
    for i in range(RECENT + 5):
        recorder.record(request(model="m", output_tokens=1, attempt=i, trace_id=None))

    async def flush_and_read(store: Store) -> dict[str, Any]:
        assert await recorder.flush(store)
        return await activity.read(store, 4, MINUTE + 3 * 60 + 30)

    seen = with_store(valkey.url, flush_and_read)
    assert recorder.pending == [] and recorder.dropped == 0
    assert db.llen("llmux:recent") == RECENT
    newest = orjson.loads(db.lindex("llmux:recent", 0) or b"{}")
    assert newest["attempt"] == RECENT + 4 and "trace_id" not in newest  # None fields are left out
    assert [r["attempt"] for r in seen["recent"][:2]] == [RECENT + 4, RECENT + 3]
    assert [m["minute"] for m in seen["series"]] == [MINUTE + 60 * i for i in range(4)]
    assert [m["requests"] for m in seen["series"]] == [60, 60, 60, 25]
    assert seen["series"][0] == {
        "minute": MINUTE,
        "requests": 60,
        "errors": 0,
        "input_tokens": 0,
        "output_tokens": 60,
        "cache_hits": 0,
        "cost_nano_usd": 0,
    }
    assert 0 < db.ttl(f"llmux:series:{MINUTE}") <= activity.SERIES_TTL_S


def test_read_fills_quiet_minutes_with_zeros_and_clamps_the_range(
    valkey: Valkey, db: redis.Redis
) -> None:
    db.hset(f"llmux:series:{MINUTE - 120}", mapping={"requests": 7, "errors": 2})
    db.lpush("llmux:recent", b"not json", msgspec.json.encode(request(MINUTE)))

    seen = with_store(valkey.url, lambda store: activity.read(store, 3, MINUTE + 5))
    assert [m["requests"] for m in seen["series"]] == [7, 0, 0]
    assert seen["series"][0]["errors"] == 2 and seen["series"][1]["cache_hits"] == 0
    assert [r["ts"] for r in seen["recent"]] == [MINUTE]  # the unreadable entry is skipped
    longest = with_store(valkey.url, lambda store: activity.read(store, 10**6, MINUTE))
    assert len(longest["series"]) == activity.MAX_MINUTES
    assert len(with_store(valkey.url, lambda s: activity.read(s, 0, MINUTE))["series"]) == 1


def test_a_store_error_drops_the_batch_quietly() -> None:
    recorder = Activity(clock=lambda: MINUTE)
    recorder.record(request(status=200))
    recorder.record(request(status=500))
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert with_store(dead, recorder.flush) is False
    assert recorder.pending == [] and recorder.dropped == 2 and recorder.flush_errors == 1


def test_pending_records_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activity, "MAX_PENDING", 3)
    recorder = Activity(clock=lambda: MINUTE)
    for _ in range(5):
        recorder.record(request())
    assert len(recorder.pending) == 3 and recorder.dropped == 2


def test_the_flusher_runs_in_the_background_and_flushes_on_close(
    valkey: Valkey, db: redis.Redis
) -> None:
    recorder = Activity(interval_s=0.05)

    async def serve(store: Store) -> None:
        recorder.start(store)
        recorder.record(request(model="first"))
        for _ in range(200):  # the periodic flush, not the one at close
            if db.llen("llmux:recent"):
                break
            await asyncio.sleep(0.05)
        assert db.llen("llmux:recent") == 1
        recorder.record(request(model="last"))
        await recorder.close()

    with_store(valkey.url, serve)
    assert [orjson.loads(r)["model"] for r in db.lrange("llmux:recent", 0, -1)] == [
        "last",
        "first",
    ]


def test_request_log_feeds_the_activity_at_any_log_level() -> None:
    telemetry = Telemetry(TelemetryConfig())
    logger = logging.getLogger("llmux.request")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        telemetry.request_log(request(model="gpt-4o-mini", key_id="key_1", cache=None))
    finally:
        logger.setLevel(level)
    [record] = telemetry.activity.pending
    assert record.model == "gpt-4o-mini" and record.key_id == "key_1"
    assert isinstance(record.ts, float) and record.ts > 0


def test_a_record_keeps_the_request_log_field_names_and_leaves_out_unset_ones() -> None:
    full = request(
        MINUTE,
        request_id="req_1",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        upstream_model="gpt-4o-mini-2024-07-18",
        input_tokens=0,
        output_tokens=7,
        cost_usd=0.0001,
        attempt=2,
        cache="miss",
        key_id="key_1",
        stream=False,
    )
    assert set(msgspec.json.decode(msgspec.json.encode(full))) == {
        "request_id",
        "trace_id",
        "client_api",
        "provider",
        "model",
        "upstream_model",
        "status",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "attempt",
        "duration_ms",
        "cache",
        "key_id",
        "stream",
        "ts",
    }
    # Zero and False are values; None is "not known" and is left out, as is an unset ts.
    assert full.fields()["input_tokens"] == 0 and full.fields()["stream"] is False
    assert request(model=None).fields() == {
        "client_api": "openai",
        "provider": "openai",
        "status": 200,
        "duration_ms": 1.0,
    }
