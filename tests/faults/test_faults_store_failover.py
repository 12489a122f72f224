"""A store primary killed with -9 under load, on a real Valkey Cluster and Sentinel set.

The primary that owns the hot slot (the OpenAI credential's quota, touched by every
OpenAI-dialect request) dies; its replica takes over. Requests keep flowing
(`store.on_error: open` routes without quotas meanwhile; `closed` answers 503), every
failed one is an error in the client's format inside the failover window, and the accounting invariant holds:
the tokens charged in Redis equal the usage the providers reported, no charge lost,
none counted twice. Then the killed node comes back (as a replica) and nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.kit import (
    REQUEST_BOUND_S,
    Load,
    base_config,
    charged,
    settled_charge,
    wait_until,
)
from tests.harness import Gateway
from tests.simulated import SimulatedProviders
from tests.topologies import (
    ValkeyCluster,
    ValkeySentinel,
    kill_and_wait_failover,
    start_store,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]
HOT = "llmux:{c:oa:k}:tpm:0"  # any key of the OpenAI credential's slot
GRACE_S = 1.0  # after the failover: clients' pools let go of the dead node


@pytest.fixture(params=["cluster", "sentinel"])
def topology(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ValkeyCluster | ValkeySentinel]:
    store = start_store(request.param, tmp_path)
    assert isinstance(store, ValkeyCluster | ValkeySentinel)
    yield store
    store.stop()


def victim_of(store: ValkeyCluster | ValkeySentinel):  # type: ignore[no-untyped-def]
    return store.owner(HOT) if isinstance(store, ValkeyCluster) else store.primary()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_killed_primary_costs_only_in_flight_calls_and_no_charge(
    topology: ValkeyCluster | ValkeySentinel,
    on_error: str,
    sim: SimulatedProviders,
    gateway_factory: Callable[..., Gateway],
) -> None:
    config = base_config(sim.base_url, store={"on_error": on_error})
    gateway = gateway_factory(config, store_url=topology.url)
    victim = victim_of(topology)
    with Load(gateway, threads=4) as load:
        wait_until(lambda: sum(r.ok for r in load.results) >= 20, what="(load before the kill)")
        killed = time.monotonic()
        failover_s = kill_and_wait_failover(topology, victim)
        settled = killed + failover_s + GRACE_S
        wait_until(lambda: sum(r.ok for r in load.between(settled, 1e18)) >= 30, timeout=20)
        victim.restart()  # back as a replica of the node that took over
        back = time.monotonic()
        wait_until(lambda: sum(r.ok for r in load.between(back, 1e18)) >= 20, timeout=20)
    failed = [r for r in load.results if not r.ok]
    felt = (gateway.workdir / "extproc.log").read_text().count(f"store error ({on_error})")
    print(
        f"{type(topology).__name__} on_error={on_error}: failover {failover_s:.2f}s, "
        f"{len(failed)} of {len(load.results)} requests failed, {felt} store errors, "
        f"slowest {max(r.seconds for r in load.results):.2f}s"
    )
    assert felt, "the ext_proc never noticed the failover"
    assert max(r.seconds for r in load.results) < REQUEST_BOUND_S
    assert all(r.dialect_error for r in failed), failed[:3]
    late = [r for r in failed if r.started + r.seconds < killed or r.started >= settled]
    assert not late, late[:3]  # failures only while the failover was under way
    assert all(r.ok for r in load.between(settled, 1e18)), "failed after the failover"

    records = sim.requests
    db = topology.client()
    for provider, wire in (("oa", "openai"), ("an", "anthropic")):
        reported = sum(
            r.usage.total_tokens for r in records if r.provider == wire and r.usage is not None
        )
        assert reported > 0
        wait_until(
            lambda p=provider, t=reported: charged(db, p) == t,  # type: ignore[misc]
            timeout=15,
            what=f"({provider}: charged {charged(db, provider)}, reported {reported})",
        )
        assert settled_charge(db, provider) == reported, provider
