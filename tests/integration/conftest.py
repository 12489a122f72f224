"""Integration fixtures: simulated providers and gateways through real Envoy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Gateway
from tests.simulated import SimulatedProviders


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatedProviders]:
    with SimulatedProviders() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_sim(sim: SimulatedProviders) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def gateway_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[dict[str, Any]], Gateway]]:
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


def close_client(client: object) -> None:
    """Close an SDK client's HTTP connections (each SDK names it differently)."""
    for owner in (client, getattr(client, "_client", None)):
        close = getattr(owner, "close", None)
        if callable(close):
            close()
            return
