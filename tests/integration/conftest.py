"""Integration fixtures: simulated providers and gateways through real Envoy."""

from __future__ import annotations

import pytest

from tests.simulated import SimulatedProviders


@pytest.fixture(autouse=True)
def _fresh_sim(sim: SimulatedProviders) -> None:
    sim.reset()


def close_client(client: object) -> None:
    """Close an SDK client's HTTP connections (each SDK names it differently)."""
    for owner in (client, getattr(client, "_client", None)):
        close = getattr(owner, "close", None)
        if callable(close):
            close()
            return
