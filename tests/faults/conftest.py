"""Fault-injection fixtures (the shared ones, `sim` and `gateway_factory`, are in tests/).

The `faults` marker lets the suite run on its own (`pytest -m faults`); it also runs
in the default suite. Every fixture here starts real processes (Envoy, the ext_proc,
Valkey) on loopback ports and stops them itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.kit import Up, base_config, up_config
from tests.harness import Gateway, Valkey
from tests.simulated import SimulatedProviders


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault injection against real Envoy, ext_proc and Valkey (pytest -m faults)",
    )


@pytest.fixture(autouse=True)
def _fresh_sim(sim: SimulatedProviders) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def faults_gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Callable[..., Gateway]:
    """Start a gateway on kit.base_config with some sections replaced, on the session Valkey."""

    def start(*, envoy_log_level: str = "info", **sections: Any) -> Gateway:
        config = base_config(sim.base_url, **sections)
        return gateway_factory(config, store_url=valkey.url, envoy_log_level=envoy_log_level)

    return start


@pytest.fixture
def up(tmp_path: Path, sim: SimulatedProviders, transport: str) -> Iterator[Up]:
    """`llmux up` on a one-model config (kit.up_config), listening; killed afterwards."""
    server = Up(tmp_path, up_config(sim, transport=transport), "--log-dir", str(tmp_path / "logs"))
    try:
        server.wait_listening()
        yield server
    finally:
        server.kill_everything()
