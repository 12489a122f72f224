"""The ext_proc killed with -9 under load, then started again on the same port.

Envoy fails closed (`failure_mode_allow: false`, `status_on_error: 502`): while the
ext_proc is down every request gets a prompt 5xx, none hangs; once it is back Envoy
reconnects by itself and requests succeed again, with no restart of Envoy.
With several workers (`extproc.run.workers`), one worker killed loses only the requests it
was serving: its supervisor starts it again and Envoy spreads new streams over the others.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from extproc.run import children
from tests.faults.kit import (
    DIALECTS,
    REQUEST_BOUND_S,
    Load,
    child_processes,
    is_dialect_error,
    send,
    wait_until,
)
from tests.harness import BOTH_TRANSPORTS, Gateway

TRANSPORTS = BOTH_TRANSPORTS  # the lean transport and the grpcio reference
pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture(scope="module")
def gateway(faults_gateway: Callable[..., Gateway]) -> Gateway:
    return faults_gateway(extproc={"workers": 1})


def restart_extproc(gateway: Gateway) -> None:
    old = gateway.procs[0]
    assert old.poll() is not None
    gateway.procs[0] = children.start_extproc(
        str(gateway.config_path),
        gateway.config.extproc.ports,
        gateway.workdir / "extproc.log",
        dict(os.environ),
    )


@pytest.mark.timeout(60)
def test_envoy_fails_closed_while_the_extproc_is_down_and_recovers_by_itself(
    gateway: Gateway,
) -> None:
    envoy = gateway.procs[1]
    with Load(gateway, threads=4) as load:
        time.sleep(1.0)
        killed = time.monotonic()
        gateway.procs[0].kill()
        gateway.procs[0].wait()
        time.sleep(2.0)
        restarting = time.monotonic()
        restart_extproc(gateway)
        back = time.monotonic()
        time.sleep(2.0)
    assert envoy.poll() is None, "Envoy died with its ext_proc"
    results = load.results
    slowest = max(r.seconds for r in results)
    assert slowest < REQUEST_BOUND_S, slowest
    # Requests still in flight at the kill are lost with the process: not counted here.
    before = load.finished_before(killed)
    assert before and all(r.ok for r in before), [r for r in before if not r.ok][:5]
    down = load.between(killed + 0.05, restarting)
    assert len(down) >= 8, f"too little load while the ext_proc was down: {len(down)}"
    not_5xx = [r for r in down if not 500 <= r.status <= 599]
    assert not not_5xx, not_5xx[:5]
    assert {r.status for r in down} == {502}, {r.status for r in down}
    after = load.between(back + 1.0, float("inf"))
    assert len(after) >= 8, f"too little load after the restart: {len(after)}"
    assert all(r.ok for r in after), [r for r in after if not r.ok][:5]


@pytest.mark.timeout(30)
def test_the_502_while_the_extproc_is_down_is_in_the_client_dialect(gateway: Gateway) -> None:
    gateway.procs[0].kill()
    gateway.procs[0].wait()
    try:
        with httpx.Client(base_url=gateway.url, timeout=REQUEST_BOUND_S) as client:
            for dialect in DIALECTS:
                model = "gpt" if dialect == "openai" else "claude"
                for stream in (False, True):
                    out = send(client, dialect, model, stream)
                    assert out.status == 502, out
                    assert is_dialect_error(dialect, out.body), out
    finally:
        restart_extproc(gateway)


def child_pids(pid: int) -> list[int]:
    return child_processes().get(pid, [])


@pytest.fixture(scope="module")
def pooled(faults_gateway: Callable[..., Gateway]) -> Gateway:
    return faults_gateway(extproc={"workers": 2})


@pytest.mark.timeout(60)
def test_one_worker_killed_loses_only_its_in_flight_requests(pooled: Gateway) -> None:
    supervisor = pooled.procs[0]
    workers = child_pids(supervisor.pid)
    assert len(workers) == 2, workers
    with Load(pooled, threads=4) as load:
        time.sleep(1.0)
        killed = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)
        wait_until(
            lambda: len(set(child_pids(supervisor.pid)) - {workers[0]}) == 2,
            timeout=10,
            what="(the supervisor restarts the worker)",
        )
        time.sleep(2.0)
    assert supervisor.poll() is None and pooled.procs[1].poll() is None
    results = load.results
    assert max(r.seconds for r in results) < REQUEST_BOUND_S
    # Requests that started after the kill never reached the dead worker's streams.
    after = load.between(killed + 0.1, float("inf"))
    assert len(after) >= 20, len(after)
    lost = [r for r in after if not r.ok]
    assert not lost, f"{len(lost)} of {len(after)} later requests failed: {lost[:3]}"
