"""Client faults: a client leaving mid-stream, a client sending its body too slowly,
and a thousand streaming clients at once on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.faults.kit import (
    chat_request,
    is_complete_stream,
    send,
    settled_charge,
    wait_until,
)
from tests.harness import BOTH_TRANSPORTS, Gateway, cluster_of
from tests.simulated import SimulatedProviders

TRANSPORTS = BOTH_TRANSPORTS  # the lean transport and the grpcio reference
pytestmark = [pytest.mark.faults, pytest.mark.integration]
IDLE_S = 2.0
MODELS = ("gpt", "gpt-fb")


@pytest.fixture(scope="module")
def gateway(faults_gateway: Callable[..., Gateway]) -> Gateway:
    return faults_gateway(
        timeouts={"connect_ms": 1000, "attempt_s": 1.0, "idle_s": IDLE_S, "request_s": 30}
    )


def quiet(gateway: Gateway) -> None:
    """Nothing left in flight: no client request, no upstream request, no ext_proc stream."""

    def idle() -> bool:
        return (
            gateway.envoy_stat("http.llmux.downstream_rq_active") == 0
            and gateway.envoy_stat("cluster.llmux_extproc.upstream_rq_active") == 0
            and all(
                gateway.envoy_stat(f"cluster.{cluster_of(gateway, m)}.upstream_rq_active") == 0
                for m in MODELS
            )
        )

    wait_until(idle, timeout=5, what="(requests or ext_proc streams left active)")


def still_serves(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for dialect, model in (("openai", "gpt"), ("anthropic", "gpt-fb")):
            out = send(client, dialect, model, True, "still there?")
            assert out.status == 200 and is_complete_stream(dialect, out.body), out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", list(MODELS))
def test_client_leaving_mid_stream_cancels_the_upstream_and_is_charged_partially(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis, model: str
) -> None:
    sim.configure(chunks=40, chunk_delay=0.05)  # a 2 s stream, left after ~3 chunks
    cluster = cluster_of(gateway, model)
    cut_before = gateway.envoy_stat(f"cluster.{cluster}.upstream_cx_destroy_local_with_active_rq")
    left = 5
    path, body = chat_request("openai", model, True)
    for _ in range(left):
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            with client.stream("POST", path, json=body) as response:
                assert response.status_code == 200
                seen = 0
                for line in response.iter_lines():
                    seen += '"content"' in line
                    if seen >= 3:
                        break  # closing the response closes the connection mid-stream
    # Envoy closed each upstream connection with its request still active: the
    # simulated provider stopped being read, i.e. the upstream stream was cancelled.
    wait_until(
        lambda: (
            gateway.envoy_stat(f"cluster.{cluster}.upstream_cx_destroy_local_with_active_rq")
            - cut_before
            == left
        ),
        timeout=5,
        what="(upstream requests reset after the client left)",
    )
    quiet(gateway)
    # Each cut stream is charged for what it used (an estimate: its usage never came).
    spent = settled_charge(db, "oa")
    assert spent > 0
    assert len(sim.requests) == left
    assert all(r.provider == "openai" for r in sim.requests)
    sim.configure(chunks=5, chunk_delay=0)
    still_serves(gateway)


@pytest.mark.timeout(30)
def test_a_body_slower_than_the_idle_timeout_is_answered_408_and_nothing_hangs(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    path, body = chat_request("openai", "gpt", True)
    raw = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: llmux\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n"
    ).encode()
    sockets = []
    started = time.monotonic()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=IDLE_S + 5)
        sock.sendall(head + raw[: len(raw) // 2])
        sockets.append(sock)
    answers = []
    for sock in sockets:
        with sock:
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
                    if b"\r\n\r\n" in data and data.startswith(b"HTTP/1.1 408"):
                        break
            except TimeoutError:
                pytest.fail(f"no answer and no close {IDLE_S + 5}s after a half-sent body")
            answers.append(data)
    elapsed = time.monotonic() - started
    assert IDLE_S - 0.2 <= elapsed < IDLE_S + 2.0, elapsed
    for data in answers:
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
    assert not sim.requests  # nothing half-read went upstream
    quiet(gateway)
    still_serves(gateway)


async def stream_one(
    client: httpx.AsyncClient, dialect: str, model: str, index: int
) -> tuple[Any, bool, float]:
    path, body = chat_request(dialect, model, True, f"crowd {index}")
    started = time.monotonic()
    try:
        async with client.stream("POST", path, json=body) as response:
            data = b"".join([chunk async for chunk in response.aiter_raw()])
            done = response.status_code == 200 and is_complete_stream(dialect, data)
            return response.status_code, done, time.monotonic() - started
    except httpx.HTTPError as exc:
        return type(exc).__name__, False, time.monotonic() - started


async def crowd(
    url: str, clients: int, models: list[str], seed: int
) -> list[tuple[Any, bool, float]]:
    # httpx scans its pool on every request: many small pools cost far less client
    # CPU than one pool of a thousand connections.
    shards = 25
    limits = httpx.Limits(max_connections=clients // shards + 1, max_keepalive_connections=0)
    timeout = httpx.Timeout(45, pool=45)
    pools = [httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) for _ in range(shards)]
    rng = random.Random(seed)
    try:
        jobs = [
            stream_one(
                pools[i % shards], rng.choice(["openai", "anthropic"]), models[i % len(models)], i
            )
            for i in range(clients)
        ]
        return await asyncio.gather(*jobs)
    finally:
        for pool in pools:
            await pool.aclose()


def thousand_streams(gateway: Gateway, sim: SimulatedProviders, models: list[str]) -> None:
    sim.configure(chunks=5, chunk_delay=0.05)
    started = time.monotonic()
    results = asyncio.run(crowd(gateway.url, 1000, models, seed=7))
    elapsed = time.monotonic() - started
    outcomes = Counter((status, done) for status, done, _ in results)
    assert elapsed < 45, elapsed
    assert max(seconds for _, _, seconds in results) < 45
    overflow = gateway.envoy_stat("cluster.llmux_extproc.upstream_rq_active_overflow")
    assert outcomes == {(200, True): 1000}, (outcomes, f"ext_proc cluster overflow: {overflow}")
    quiet(gateway)


@pytest.fixture(scope="module")
def roomy(faults_gateway: Callable[..., Gateway]) -> Gateway:
    """Timeouts that a thousand streams sharing two cores never reach."""
    return faults_gateway(
        timeouts={"connect_ms": 5000, "attempt_s": 20, "idle_s": 30, "request_s": 60},
        envoy_log_level="warning",
    )


@pytest.mark.timeout(90)
def test_a_thousand_concurrent_streams_all_complete(
    roomy: Gateway, sim: SimulatedProviders
) -> None:
    thousand_streams(roomy, sim, ["gpt", "claude"])


@pytest.mark.timeout(90)
def test_a_thousand_concurrent_streams_on_fallback_models_all_complete(
    roomy: Gateway, sim: SimulatedProviders
) -> None:
    thousand_streams(roomy, sim, ["gpt-fb"])
