"""Accounting under mixed load with random (seeded) faults: nothing lost, nothing doubled.

For every credential, the tokens charged in Redis equal the usage the simulated
upstreams reported for the requests they completed. Faults are partitioned by the
upstream's wire format so that each credential's expectation is exact:

* OpenAI- and Anthropic-wire credentials only meet all-or-nothing faults (errors, an
  HTML 502, a reset before headers, slow headers, short stalls): the charge is exact,
  and a request that fell back to the second target is charged once, on the second.
* The Gemini-wire credential meets faults that cut a stream after it started: those
  requests are charged an estimate of what they used (never nothing), the others exactly.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.faults.kit import (
    DIALECTS,
    base_config,
    charged,
    limited_provider,
    send,
    settled_charge,
    wait_until,
)
from tests.harness import BOTH_TRANSPORTS, Gateway, Valkey
from tests.simulated import Fault, SimulatedProviders

TRANSPORTS = BOTH_TRANSPORTS  # the lean transport and the grpcio reference
pytestmark = [pytest.mark.faults, pytest.mark.integration]
ATTEMPT_S = 1.0
IDLE_S = 2.0
SEED = 20261126
THREADS = 8
REQUESTS_PER_THREAD = 25
MAX_INPUT_ESTIMATE = 150  # tokens: every client body here is well under 600 bytes

WHOLE_FAULTS: list[Callable[[], Fault]] = [
    lambda: Fault.error(500),
    lambda: Fault.error(503),
    lambda: Fault.html_502(),
    lambda: Fault.reset(),
    lambda: Fault.delay(ATTEMPT_S + 2),  # per-try timeout: the attempt is abandoned
    lambda: Fault.delay(0.2),  # slow but in time: completes
    # A pause shorter than the idle timeout: completes. After the first frame, so that a
    # buffered answer is not complete on the wire while the simulator still holds the
    # connection (Envoy would reuse it and the next request would queue behind the pause).
    lambda: Fault.stall(1, 0.3),
]
CUT_FAULTS: list[Callable[[], Fault]] = [
    lambda: Fault.reset_mid_stream(2),
    lambda: Fault.stall(1, IDLE_S + 2),
    lambda: Fault.malformed_sse(2),
    lambda: Fault.malformed_json(2),
]
CUT_NAMES = {"reset_mid_stream", "malformed_sse", "malformed_json"}
MODELS = ["m-oa", "m-an", "m-fb", "m-gm"]


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    config = base_config(
        sim.base_url,
        timeouts={"connect_ms": 1000, "attempt_s": ATTEMPT_S, "idle_s": IDLE_S, "request_s": 30},
    )
    config["providers"].append(limited_provider("gm", "gemini", sim.base_url))
    config["models"] = [
        {"name": "m-oa", "targets": [{"provider": "oa", "model": "gpt-up"}]},
        {"name": "m-an", "targets": [{"provider": "an", "model": "claude-up"}]},
        {
            "name": "m-fb",
            "targets": [
                {"provider": "oa", "model": "gpt-up", "priority": 0},
                {"provider": "an", "model": "claude-up", "priority": 1},
            ],
        },
        {"name": "m-gm", "targets": [{"provider": "gm", "model": "gemini-up"}]},
    ]
    return gateway_factory(config, store_url=valkey.url)


def worker(
    gateway: Gateway, sim: SimulatedProviders, rng: random.Random, outcomes: Counter[str]
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for n in range(REQUESTS_PER_THREAD):
            model = rng.choice(MODELS)
            if rng.random() < 0.35:
                if model == "m-gm":
                    sim.inject(rng.choice(CUT_FAULTS)(), provider="gemini")
                else:
                    wire = rng.choice(["openai", "anthropic"])
                    sim.inject(rng.choice(WHOLE_FAULTS)(), provider=wire)
            dialect = rng.choice(DIALECTS)
            stream = rng.random() < 0.6
            out = send(client, dialect, model, stream, f"account {rng.random()} {n}")
            assert out.seconds < IDLE_S + 3, out
            outcomes[f"{model} {out.status} {'cut' if out.transport_error else 'whole'}"] += 1


@pytest.mark.timeout(120)
def test_charged_tokens_equal_the_usage_upstreams_reported(
    gateway: Gateway, sim: SimulatedProviders, db: redis.Redis
) -> None:
    outcomes: Counter[str] = Counter()
    threads = [
        threading.Thread(target=worker, args=(gateway, sim, random.Random(SEED + i), outcomes))
        for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(100)
        assert not thread.is_alive(), "a client hung"
    sim.clear_faults()  # faults no request took
    records = sim.requests
    assert sum(outcomes.values()) == THREADS * REQUESTS_PER_THREAD
    faults = Counter(r.fault for r in records)
    assert len(faults) >= 8, faults  # the run met most kinds of fault

    def reported(provider: str, *, cut: bool | None = None) -> int:
        return sum(
            r.usage.total_tokens
            for r in records
            if r.provider == provider
            and r.usage is not None
            and (cut is None or (r.fault in CUT_NAMES or r.fault == "stall") == cut)
        )

    # Exact for the credentials that met only all-or-nothing faults.
    expected: dict[str, Any] = {"oa": reported("openai"), "an": reported("anthropic")}
    for provider, tokens in expected.items():
        assert tokens > 0
        wait_until(
            lambda p=provider, t=tokens: charged(db, p) == t,
            timeout=10,
            what=f"({provider}: charged {charged(db, provider)}, reported {tokens})",
        )
        assert settled_charge(db, provider) == tokens, provider
    # The Gemini-wire credential: completed requests exactly, cut ones in between.
    cut = [r for r in records if r.provider == "gemini" and r.fault is not None]
    whole = reported("gemini", cut=False)
    spent = settled_charge(db, "gm")
    assert cut, "no stream was cut"
    low = whole + len(cut)
    high = whole + reported("gemini", cut=True) + MAX_INPUT_ESTIMATE * len(cut)
    assert low <= spent <= high, (spent, low, high, Counter(r.fault for r in cut))
