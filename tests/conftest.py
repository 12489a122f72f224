"""Shared fixtures: real Valkey and simulated providers for the whole session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (see below)
import pytest
import redis

from tests.harness import Gateway, Valkey
from tests.simulated import SimulatedProviders
from tests.topologies import start_store

# hypothesis is imported above, not lazily by its plugin at the end of a session that
# used none of it: CPython 3.11.7's ast.parse can then fail with "SystemError: AST
# constructor recursion depth mismatch" (python/cpython#106905, pytest-dev/pytest#10763)
# once the `regex` module (guardrails) is loaded, failing a green run at its summary.


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llmux")


@pytest.fixture(scope="session")
def valkey(workdir: Path) -> Iterator[Valkey]:
    """The session's store: one Valkey, or with LLMUX_TEST_STORE=cluster|sentinel a
    Valkey Cluster or a Sentinel set (tests/topologies.py) behind the same `url`/`client()`."""
    server = start_store(os.environ.get("LLMUX_TEST_STORE", "single"), workdir)
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def db(valkey: Valkey) -> Iterator[redis.Redis]:
    """The session store, emptied for the test."""
    client = valkey.client()
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatedProviders]:
    with SimulatedProviders() as server:
        yield server


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets `TRANSPORTS = harness.BOTH_TRANSPORTS` runs its tests on each ext_proc
    transport (the lean server and the grpcio reference); others run on the default."""
    transports = getattr(metafunc.module, "TRANSPORTS", None)
    if transports and "transport" in metafunc.fixturenames:
        metafunc.parametrize("transport", transports, scope="module")


@pytest.fixture(scope="module")
def transport() -> str:
    return "lean"  # the default transport; see pytest_generate_tests


@pytest.fixture(scope="module")
def gateway_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[Callable[..., Gateway]]:
    """Start gateways for a module on its transport; print their logs when a test failed."""
    started: list[Gateway] = []

    def start(config: dict[str, Any], **kwargs: Any) -> Gateway:
        workdir: Path = tmp_path_factory.mktemp("gateway")
        config = {**config, "extproc": {"transport": transport, **config.get("extproc", {})}}
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
