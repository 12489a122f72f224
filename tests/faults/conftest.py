"""Fault-injection fixtures (the shared ones, `sim` and `gateway_factory`, are in tests/).

The `faults` marker lets the suite run on its own (`pytest -m faults`); it also runs
in the default suite. Every fixture here starts real processes (Envoy, the ext_proc,
Valkey) on loopback ports and stops them itself.
"""

from __future__ import annotations

import pytest

from tests.simulated import SimulatedProviders


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault injection against real Envoy, ext_proc and Valkey (pytest -m faults)",
    )


@pytest.fixture(autouse=True)
def _fresh_sim(sim: SimulatedProviders) -> None:
    sim.reset()
