"""Unit fixtures: a store of each kind for the phase tests (the in-memory fake, real Valkey).

test_store_contract.py keeps the two alike; running the phases on both shows the
fake is enough for them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from extproc.store import RedisStore, Store
from tests.fakes.clock import FakeClock
from tests.fakes.memory_store import MemoryStore
from tests.harness import Valkey
from tests.unit.phase_world import NOW


@pytest.fixture(params=["memory", "valkey"])
def new_store(request: pytest.FixtureRequest) -> Callable[[], Store]:
    """Makes an empty store on the fixed clock; call it inside the test's event loop."""
    if request.param == "memory":
        return lambda: MemoryStore(FakeClock(NOW))
    valkey: Valkey = request.getfixturevalue("valkey")
    request.getfixturevalue("db")  # emptied for this test
    return lambda: RedisStore(valkey.url, clock=lambda: NOW)
