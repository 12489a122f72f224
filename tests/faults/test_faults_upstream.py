"""Upstream faults: every one reaches the client as a well-formed error in its own
dialect (or as a fallback to the second target, before the first byte), never as a
hang or a 200 that looks complete; the usage the upstream produced is still charged.

Each fault runs for the OpenAI and the Anthropic client APIs, streamed and buffered,
against a model with one target (the error reaches the client) and, for the faults
that happen before the first byte, against a model with a fallback target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import httpx
import pytest
import redis

from tests.faults.kit import (
    DIALECTS,
    Outcome,
    charged,
    is_complete_stream,
    is_dialect_error,
    never_silent,
    send,
    settled_charge,
)
from tests.harness import BOTH_TRANSPORTS, Gateway
from tests.simulated import Fault, SimulatedProviders

TRANSPORTS = BOTH_TRANSPORTS  # the lean transport and the grpcio reference
pytestmark = [pytest.mark.faults, pytest.mark.integration]
ATTEMPT_S = 1.0
IDLE_S = 2.0  # larger than the attempt timeout, so a slow first attempt can fall back
DELAYED_CLOSE_S = 1.0  # Envoy's default delayed_close_timeout of a downstream connection
SIM_PROVIDER = {"openai": "openai", "anthropic": "anthropic"}  # client dialect -> upstream wire
TARGET = {"openai": ("gpt", "oa"), "anthropic": ("claude", "an")}  # model, llmux provider


@pytest.fixture(scope="module")
def gateway(faults_gateway: Callable[..., Gateway]) -> Gateway:
    return faults_gateway(
        timeouts={"connect_ms": 1000, "attempt_s": ATTEMPT_S, "idle_s": IDLE_S, "request_s": 30}
    )


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        yield http


class Case(NamedTuple):
    fault: Callable[[bool], Fault]  # stream -> the fault
    produced: bool  # the upstream sent a 200 and some output before failing
    bound_s: float  # the client has its answer within this time


CASES = {
    "reset_before_headers": Case(lambda s: Fault.reset(), False, 1.0),
    # Buffered answers are two frames: cut after the first, mid-body. When Envoy already
    # sent the headers it closes the client connection with its delayed close (1 s).
    "reset_mid_stream": Case(
        lambda s: Fault.reset_mid_stream(2 if s else 1), True, DELAYED_CLOSE_S + 1.0
    ),
    "stalled_stream": Case(
        lambda s: Fault.stall(2 if s else 1, IDLE_S + 3), True, IDLE_S + DELAYED_CLOSE_S + 1.0
    ),
    "slow_headers": Case(lambda s: Fault.delay(ATTEMPT_S + 3), False, ATTEMPT_S + 1.0),
    "malformed_json": Case(lambda s: Fault.malformed_json(2), True, 1.0),
    "malformed_sse": Case(lambda s: Fault.malformed_sse(2), True, 1.0),
    "html_502": Case(lambda s: Fault.html_502(), False, 1.0),
}


def params(names: list[str]) -> list[Any]:
    """Every fault name x buffered/streamed x client dialect."""
    return [
        pytest.param(
            name, stream, dialect, id=f"{name}-{'stream' if stream else 'buffered'}-{dialect}"
        )
        for name in names
        for stream in (False, True)
        for dialect in DIALECTS
    ]


def check_failure_shape(dialect: str, stream: bool, out: Outcome) -> str:
    """How the client learnt of the failure; buffered answers must be an error status."""
    if not stream:
        assert out.transport_error is None, out
        assert out.status >= 500, out
        assert is_dialect_error(dialect, out.body), out
        return f"error {out.status}"
    return never_silent(dialect, out)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "stream", "dialect"), params(list(CASES)))
def test_upstream_fault_reaches_the_client_as_an_error_in_its_dialect_and_is_charged(
    gateway: Gateway,
    sim: SimulatedProviders,
    db: redis.Redis,
    client: httpx.Client,
    name: str,
    stream: bool,
    dialect: str,
) -> None:
    case = CASES[name]
    model, provider = TARGET[dialect]
    sim.inject(case.fault(stream), provider=SIM_PROVIDER[dialect])
    out = send(client, dialect, model, stream)
    assert out.seconds < case.bound_s, out
    how = check_failure_shape(dialect, stream, out)
    (record,) = sim.requests
    assert record.fault is not None
    spent = settled_charge(db, provider)
    if case.produced:
        assert spent > 0, f"{how}: the partial usage was not charged"
    else:
        assert spent == 0, f"{how}: charged {spent} for an attempt that produced nothing"
    # The gateway still serves the next request normally (nothing stuck in the ext_proc).
    again = send(client, dialect, model, stream, "after the fault")
    assert again.status == 200, again
    if stream:
        assert is_complete_stream(dialect, again.body), again


BEFORE_FIRST_BYTE = {
    "reset_before_headers": lambda: Fault.reset(),
    "error_500": lambda: Fault.error(500),
    "html_502": lambda: Fault.html_502(),
    "slow_headers": lambda: Fault.delay(ATTEMPT_S + 3),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("name", list(BEFORE_FIRST_BYTE))
def test_fault_before_the_first_byte_falls_back_and_charges_only_the_answer(
    gateway: Gateway,
    sim: SimulatedProviders,
    db: redis.Redis,
    client: httpx.Client,
    name: str,
    dialect: str,
    stream: bool,
) -> None:
    sim.inject(BEFORE_FIRST_BYTE[name](), provider="openai")  # the primary target of gpt-fb
    out = send(client, dialect, "gpt-fb", stream)
    assert out.seconds < ATTEMPT_S + 1.0, out
    assert out.status == 200, out
    assert out.headers["x-llmux-provider"] == "an", out.headers
    assert out.headers["x-llmux-attempts"] == "2", out.headers
    if stream:
        assert out.transport_error is None and is_complete_stream(dialect, out.body), out
    else:
        assert b'"usage"' in out.body, out
    failed, answered = sim.requests
    assert failed.provider == "openai" and failed.fault is not None
    assert answered.provider == "anthropic" and answered.usage is not None
    assert settled_charge(db, "an") == answered.usage.total_tokens
    assert charged(db, "oa") == 0


AFTER_HEADERS = ["reset_mid_stream", "stalled_stream", "malformed_json", "malformed_sse"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "stream", "dialect"), params(AFTER_HEADERS))
def test_fault_after_the_upstream_headers_on_a_model_with_fallback(
    gateway: Gateway,
    sim: SimulatedProviders,
    db: redis.Redis,
    client: httpx.Client,
    name: str,
    stream: bool,
    dialect: str,
) -> None:
    """The per-attempt path: a fault once the primary answered 200 either still falls back
    (its answer was held: no content had gone out) or reaches the client as an error.
    The backup is charged exactly for its answer; the primary for what the client got
    of it, or for an unreadable 200 (the provider bills it), never for an answer held
    back and failed over (issue #19)."""
    case = CASES[name]
    sim.inject(case.fault(stream), provider="openai")  # the primary target of gpt-fb
    out = send(client, dialect, "gpt-fb", stream)
    assert out.seconds < case.bound_s, out
    answered = [r for r in sim.requests if r.provider == "anthropic"]
    fell_back = out.status == 200 and out.transport_error is None and bool(answered)
    if fell_back:
        assert out.headers["x-llmux-provider"] == "an", out.headers
        assert is_complete_stream(dialect, out.body) if stream else b'"usage"' in out.body
        (backup,) = answered
        assert backup.usage is not None
        assert settled_charge(db, "an") == backup.usage.total_tokens
    else:
        how = check_failure_shape(dialect, stream, out)
        assert not answered, how
        assert charged(db, "an") == 0
    primary = settled_charge(db, "oa")
    if fell_back and not stream and name in ("reset_mid_stream", "stalled_stream"):
        assert primary == 0, "a held answer that failed over was charged"
    elif not fell_back:
        assert primary > 0, "the primary's partial usage was not charged"
    # A stream whose first content was released as the upstream reset may still be
    # retried (Envoy's router had not the headers yet): its content is charged, a cut.
