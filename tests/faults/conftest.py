"""Fault-injection fixtures: simulated providers, gateways and a clean Redis per test.

The `faults` marker lets the suite run on its own (`pytest -m faults`); it also runs
in the default suite. Every fixture here starts real processes (Envoy, the ext_proc,
Valkey) on loopback ports and stops them itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.harness import Gateway, Valkey
from tests.simulated import SimulatedProviders


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault injection against real Envoy, ext_proc and Valkey (pytest -m faults)",
    )


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatedProviders]:
    with SimulatedProviders() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_sim(sim: SimulatedProviders) -> None:
    sim.reset()


@pytest.fixture
def db(valkey: Valkey) -> Iterator[redis.Redis]:
    """The session Valkey, emptied for the test."""
    client = redis.Redis.from_url(valkey.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="module")
def gateway_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Gateway]]:
    """Start gateways for a module; print their logs when a test of the module failed."""
    started: list[Gateway] = []

    def start(config: dict[str, Any], **kwargs: Any) -> Gateway:
        workdir: Path = tmp_path_factory.mktemp("gateway")
        gateway = Gateway(workdir, config, **kwargs)
        started.append(gateway)
        return gateway

    yield start
    failed = any(
        getattr(item, "rep_call", None) and item.rep_call.failed
        for item in request.session.items
        if item.module is request.module
    )
    for gateway in started:
        if failed:
            print(gateway.logs())
        gateway.stop()
