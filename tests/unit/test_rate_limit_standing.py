"""Rate-limit headers and the per-IP address (pure), and their countdown and reset in the router."""

from __future__ import annotations

import asyncio

from extproc.decisions.rate_limit_headers import Standing, client_address, go_duration, headers
from extproc.phases.router import RouterStream
from tests.fakes.clock import FakeClock
from tests.fakes.memory_store import MemoryStore
from tests.unit import phase_world as world


def test_both_spellings_of_a_standing() -> None:
    got = dict(headers(Standing("key", 60, 1000, 3, 250, 42)))
    assert got == {
        "ratelimit-policy": '"key";q=60;w=60',
        "ratelimit": '"key";r=57;t=42',
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "57",
        "x-ratelimit-reset-requests": "42s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "750",
        "x-ratelimit-reset-tokens": "42s",
    }
    assert headers(Standing("ip", None, None, 0, 0, 5)) == []
    assert dict(headers(Standing("ip", 2, None, 5, 0, 5)))["x-ratelimit-remaining-requests"] == "0"
    assert [go_duration(s) for s in (0, 7, 60, 61)] == ["0s", "7s", "1m0s", "1m1s"]


def test_the_client_address_is_the_one_envoy_appended_unless_hops_are_trusted() -> None:
    forwarded = "6.6.6.6, 10.0.0.9, 127.0.0.1"  # client-written, a proxy's, Envoy's peer
    assert client_address(forwarded, 0) == "127.0.0.1"
    assert client_address(forwarded, 1) == "10.0.0.9"
    assert client_address(forwarded, 5) == "6.6.6.6"
    assert client_address(None, 0) is None


def test_the_per_ip_headers_count_down_and_reset_with_the_window() -> None:
    clock = FakeClock()  # 10 s into a minute
    config = {**world.CONFIG, "auth": {"anonymous_rpm": 2}}
    request = {":method": "POST", ":path": "/v1/chat/completions", "x-forwarded-for": "9.9.9.9"}

    async def remaining(ctx: object) -> tuple[int, dict[str, str]]:
        stream = RouterStream(ctx, {})  # type: ignore[arg-type]
        first = await stream.request_headers(request, False, None)
        if not isinstance(first, world.Continue):
            return first.status, dict(first.headers)
        answer = world.continued(await stream.response_headers({":status": "200"}))
        return 200, world.headers_of(answer)

    async def scenario() -> None:
        ctx = world.context(MemoryStore(clock), config)
        seen = [await remaining(ctx) for _ in range(3)]
        assert [status for status, _ in seen] == [200, 200, 429]
        assert [h["x-ratelimit-remaining-requests"] for _, h in seen] == ["1", "0", "0"]
        assert {h["x-ratelimit-reset-requests"] for _, h in seen} == {"50s"}
        clock.advance(50)  # the next calendar minute
        status, fresh = await remaining(ctx)
        assert status == 200 and fresh["ratelimit"] == '"ip";r=1;t=60'

    asyncio.run(scenario())
