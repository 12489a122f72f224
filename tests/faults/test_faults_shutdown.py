"""Signals to `llmux up`. SIGTERM: in-flight streams finish (with their terminator)
within the drain timeout, new requests are refused meanwhile, then every child (Envoy,
the ext_proc, the embedded Valkey) exits. SIGHUP: the config is reloaded, nothing exits.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from extproc.children import free_port
from tests.faults.kit import chat_request, child_processes, is_complete_stream
from tests.harness import BOTH_TRANSPORTS
from tests.simulated import SimulatedProviders

TRANSPORTS = BOTH_TRANSPORTS  # the lean transport and the grpcio reference
pytestmark = [pytest.mark.faults, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
DRAIN_BOUND_S = 20.0  # `llmux up` must have exited this long after SIGTERM


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    parents = child_processes()
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


class Up:
    """`python -m extproc up` on ports picked here, with its stdout to read."""

    def __init__(self, workdir: Path, sim: SimulatedProviders) -> None:
        self.port = free_port()
        config: dict[str, Any] = {
            "listen": {"address": "127.0.0.1", "port": self.port},
            "admin": {"port": free_port()},
            "extproc": {"port": free_port(), "admin_port": free_port(), "workers": 1},
            "providers": [
                {"name": "oa", "type": "openai", "base_url": sim.base_url, "api_key": "sk-oa"}
            ],
            "models": [{"name": "gpt", "targets": [{"provider": "oa", "model": "gpt-up"}]}],
            "timeouts": {"idle_s": 10, "attempt_s": 5},
        }
        path = self.config_path = workdir / "llmux.yaml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["up", "--config", str(path), "--log-dir", str(workdir / "logs")]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "extproc", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children: list[int] = []

    def wait_listening(self, timeout: float = 40) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        output = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                output += line
                if b"llmux listening on" in line:
                    self.children = descendants(self.proc.pid)
                    return
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"llmux up did not start: {output.decode(errors='replace')}")

    def kill_everything(self) -> None:
        for pid in [*descendants(self.proc.pid), *self.children]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def up(tmp_path: Path, sim: SimulatedProviders) -> Iterator[Up]:
    server = Up(tmp_path, sim)
    try:
        server.wait_listening()
        yield server
    finally:
        server.kill_everything()


@pytest.mark.timeout(60)
def test_sigterm_lets_in_flight_streams_finish_and_refuses_new_requests(
    up: Up, sim: SimulatedProviders
) -> None:
    sim.configure(chunks=20, chunk_delay=0.15)  # a 3 s stream
    path, body = chat_request("openai", "gpt", True)
    first_bytes = threading.Event()
    result: dict[str, Any] = {}

    def stream() -> None:
        data = b""
        try:
            with httpx.stream("POST", up.url + path, json=body, timeout=30) as response:
                result["status"] = response.status_code
                for chunk in response.iter_raw():
                    data += chunk
                    if b'"content"' in data:
                        first_bytes.set()
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)
        result["body"] = data
        first_bytes.set()

    client = threading.Thread(target=stream)
    client.start()
    assert first_bytes.wait(10), "the stream never started"
    signalled = time.monotonic()
    up.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    try:
        late = httpx.post(up.url + path, json={**body, "stream": False}, timeout=5)
        refused = f"status {late.status_code}"
        assert late.status_code >= 500, f"a request sent during the drain was served: {refused}"
    except httpx.TransportError as exc:
        refused = repr(exc)
    client.join(30)
    assert not client.is_alive(), "the in-flight stream hung"
    assert "error" not in result, result.get("error")
    assert result["status"] == 200
    assert is_complete_stream("openai", result["body"]), result["body"][-300:]
    code = up.proc.wait(DRAIN_BOUND_S)
    assert time.monotonic() - signalled < DRAIN_BOUND_S
    assert code == 0
    left = [pid for pid in up.children if alive(pid)]
    assert not left, f"children still running after llmux up exited: {left}"


@pytest.mark.timeout(60)
def test_sigterm_with_nothing_in_flight_stops_every_child(up: Up) -> None:
    assert len(up.children) >= 3, up.children  # valkey, ext_proc, envoy
    response = httpx.post(
        up.url + "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(DRAIN_BOUND_S) == 0
    time.sleep(0.2)
    left = [pid for pid in up.children if alive(pid)]
    assert not left, f"children still running after llmux up exited: {left}"


@pytest.mark.timeout(60)
def test_sighup_reloads_the_config_and_every_child_stays(up: Up) -> None:
    config = yaml.safe_load(up.config_path.read_text())
    config["models"].append({"name": "gpt-new", "targets": [{"provider": "oa", "model": "n"}]})
    fresh = up.config_path.with_suffix(".new")
    fresh.write_text(yaml.safe_dump(config))
    fresh.replace(up.config_path)
    up.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    body = {"model": "gpt-new", "messages": [{"role": "user", "content": "hi"}]}
    status = 0
    while status != 200 and time.monotonic() < deadline:
        status = httpx.post(up.url + "/v1/chat/completions", json=body, timeout=10).status_code
        time.sleep(0.05)
    assert status == 200, "the new model was never served"
    assert up.proc.poll() is None
    assert all(alive(pid) for pid in up.children), "a child exited on SIGHUP"
