"""Signals to `llmux up`. SIGTERM: in-flight streams finish (with their terminator)
within the drain timeout, new requests are refused meanwhile, then every child (Envoy,
the ext_proc, the embedded Valkey) exits. SIGHUP: the config is reloaded, nothing exits.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.faults.kit import Up, alive, chat_request, is_complete_stream
from tests.harness import BOTH_TRANSPORTS
from tests.simulated import SimulatedProviders

TRANSPORTS = BOTH_TRANSPORTS  # the lean transport and the grpcio reference
pytestmark = [pytest.mark.faults, pytest.mark.integration]
DRAIN_BOUND_S = 20.0  # `llmux up` must have exited this long after SIGTERM


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
