"""The circuit breaker counts the provider's failures, not the clients' impatience.

A client that hangs up before the answer (a cancelled request, a load generator
stopping) must not open the breaker of the model's target; an upstream that times
out must.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import redis

from tests.faults.kit import chat_request, wait_until
from tests.harness import BOTH_TRANSPORTS, Gateway
from tests.simulated import Fault, SimulatedProviders

TRANSPORTS = BOTH_TRANSPORTS  # the lean transport and the grpcio reference
pytestmark = [pytest.mark.faults, pytest.mark.integration]
FAILURES = 2  # the breaker opens at this many failures in its window


@pytest.fixture(scope="module")
def gateway(faults_gateway: Callable[..., Gateway]) -> Gateway:
    return faults_gateway(
        timeouts={"connect_ms": 1000, "attempt_s": 1.0, "idle_s": 2.0, "request_s": 30},
        routing={"cooldown_s": 1, "breaker": {"failures": FAILURES, "window_s": 60, "open_s": 60}},
    )


def opened(db: redis.Redis) -> list[bytes]:
    return list(db.keys("llmux:*:open"))


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
def test_clients_leaving_before_the_answer_do_not_open_the_breaker(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis, stream: bool
) -> None:
    path, body = chat_request("openai", "gpt", stream)
    for _ in range(FAILURES + 2):
        sim.inject(Fault.delay(0.6), provider="openai")  # answers, but after the client left
        with pytest.raises(httpx.TimeoutException):
            httpx.post(gateway.url + path, json=body, timeout=0.2)
    wait_until(lambda: len(sim.requests_for("openai")) == FAILURES + 2, timeout=5, what="")
    response = httpx.post(gateway.url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert not opened(db)
    assert not db.keys("llmux:*:fail")


def test_upstream_timeouts_still_open_the_breaker(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    path, body = chat_request("openai", "gpt", False)
    for _ in range(FAILURES):
        sim.inject(Fault.delay(3), provider="openai")  # longer than the attempt timeout
        assert httpx.post(gateway.url + path, json=body, timeout=10).status_code == 504
    wait_until(lambda: bool(opened(db)), timeout=5, what="(the breaker never opened)")
    served = len(sim.requests_for("openai"))
    refused = httpx.post(gateway.url + path, json=body, timeout=10)
    assert refused.status_code == 503 and "failing" in refused.text
    assert len(sim.requests_for("openai")) == served  # not sent to the failing target
