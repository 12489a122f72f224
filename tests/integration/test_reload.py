"""Config hot reload through real Envoy: new providers and models, credentials, removals.

The operator rewrites the config file; the ext_proc notices, hands Envoy the new
model clusters and routes (CDS/RDS files Envoy watches), then serves the new config.
Requests in flight finish on what they started with.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from extproc.config import settings as llmux_config
from extproc.envoy import bootstrap as envoy_config
from tests.harness import Gateway, cluster_of, provider_config
from tests.simulated import SimulatedProviders

pytestmark = pytest.mark.integration
HELLO = [{"role": "user", "content": "Say hello"}]


def base(sim: SimulatedProviders) -> dict[str, Any]:
    return {
        "providers": [provider_config("oa", "openai", sim.base_url, "sk-first")],
        "models": [{"name": "gpt", "targets": [{"provider": "oa", "model": "gpt-up"}]}],
    }


@pytest.fixture
def second_sim() -> Iterator[SimulatedProviders]:
    """Another provider host: a new provider means a new Envoy endpoint."""
    with SimulatedProviders() as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sim: SimulatedProviders) -> Iterator[None]:
    sim.reset()
    yield
    sim.reset()


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def models_listed(gateway: Gateway) -> set[str]:
    body = httpx.get(f"{gateway.url}/v1/models").json()
    return {entry["id"] for entry in body["data"]}


def envoy_clusters(gateway: Gateway) -> set[str]:
    text = httpx.get(f"{gateway.admin_url}/clusters").text
    return {line.split("::")[0] for line in text.splitlines() if line.startswith("llmux_model_")}


@pytest.fixture
def gateway(sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(base(sim))


def test_a_new_provider_and_model_are_served_without_restarting_envoy(
    gateway: Gateway, sim: SimulatedProviders, second_sim: SimulatedProviders
) -> None:
    envoy_pid = gateway.procs[-1].pid
    config = base(sim)
    config["providers"].append(
        provider_config("claude-host", "anthropic", second_sim.base_url, "sk-ant-new")
    )
    config["models"].append(
        {"name": "claude", "targets": [{"provider": "claude-host", "model": "claude-up"}]}
    )
    gateway.rewrite_config(config)
    wait_until(lambda: "claude" in models_listed(gateway), "the new model to be listed")

    reply = client(gateway).chat.completions.create(model="claude", messages=HELLO)
    assert reply.choices[0].message.content
    upstream = second_sim.last_request("anthropic")
    assert upstream.body["model"] == "claude-up"
    assert upstream.headers["x-api-key"] == "sk-ant-new"
    assert client(gateway).chat.completions.create(model="gpt", messages=HELLO).choices
    assert gateway.procs[-1].pid == envoy_pid and gateway.procs[-1].poll() is None
    assert gateway.envoy_stat("cluster_manager.cds.update_rejected") == 0


def test_a_changed_credential_is_used_by_the_next_request(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    client(gateway).chat.completions.create(model="gpt", messages=HELLO)
    assert sim.last_request("openai").headers["authorization"] == "Bearer sk-first"
    config = base(sim)
    config["providers"][0]["api_key"] = "sk-rotated"
    gateway.rewrite_config(config)

    def rotated() -> bool:
        client(gateway).chat.completions.create(model="gpt", messages=HELLO)
        return sim.last_request("openai").headers["authorization"] == "Bearer sk-rotated"

    wait_until(rotated, "the rotated key to reach the provider")
    # Same targets: the model keeps its Envoy cluster (only the ext_proc's view changed).
    assert envoy_clusters(gateway) == {cluster_of(gateway, "gpt")}


def test_a_stream_in_flight_finishes_on_the_targets_it_started_with(
    gateway: Gateway, sim: SimulatedProviders, second_sim: SimulatedProviders
) -> None:
    sim.configure(chunks=30, chunk_delay=0.1)  # a 3 s stream
    old_cluster = cluster_of(gateway, "gpt")
    pieces: list[str] = []
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            chunks = client(gateway).chat.completions.create(
                model="gpt", messages=HELLO, stream=True
            )
            pieces.extend(c.choices[0].delta.content or "" for c in chunks if c.choices)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=stream)
    worker.start()
    wait_until(
        lambda: gateway.envoy_stat(f"cluster.{old_cluster}.upstream_rq_active") == 1, "the stream"
    )
    # The model moves to another provider host: a new cluster replaces the old one.
    config = base(sim)
    config["providers"] = [provider_config("oa", "openai", second_sim.base_url, "sk-second")]
    gateway.rewrite_config(config)
    wait_until(lambda: len(envoy_clusters(gateway)) == 2, "the new cluster beside the old")

    def moved() -> bool:
        client(gateway).chat.completions.create(model="gpt", messages=HELLO)
        return bool(second_sim.requests_for("openai"))

    wait_until(moved, "new requests to reach the new provider host")
    assert second_sim.last_request("openai").headers["authorization"] == "Bearer sk-second"

    worker.join(timeout=20)
    assert not errors, errors
    assert len([p for p in pieces if p]) == 30  # every chunk of the old stream arrived
    assert sim.last_request("openai").headers["authorization"] == "Bearer sk-first"
    # Once nothing runs on it, the old cluster leaves Envoy.
    wait_until(lambda: old_cluster not in envoy_clusters(gateway), "the old cluster's removal")
    assert envoy_clusters(gateway) == {cluster_of_config(gateway, config, "gpt")}


def cluster_of_config(gateway: Gateway, config: dict[str, Any], model: str) -> str:
    parsed = llmux_config.parse(yaml.safe_dump(config), env={})
    found = parsed.model(model)
    assert found is not None
    return envoy_config.model_cluster_name(parsed, found)


def test_an_invalid_config_is_rejected_and_the_running_one_stays(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    config = base(sim)
    broken = copy.deepcopy(config)
    broken["models"].append({"name": "ghost", "targets": [{"provider": "nowhere", "model": "x"}]})
    gateway.rewrite_config(broken)
    log = gateway.workdir / "extproc.log"
    wait_until(lambda: "config reload rejected" in log.read_text(), "the rejection log line")
    assert "nowhere" in log.read_text()  # the line says what is wrong
    assert "ghost" not in models_listed(gateway)
    assert client(gateway).chat.completions.create(model="gpt", messages=HELLO).choices

    gateway.config_path.write_text("models: [unclosed")  # not even YAML
    time.sleep(1.5)  # a watch period: nothing may change
    assert client(gateway).chat.completions.create(model="gpt", messages=HELLO).choices

    config["models"].append({"name": "gpt-2", "targets": [{"provider": "oa", "model": "gpt-up"}]})
    gateway.rewrite_config(config)  # fixed: applied
    wait_until(lambda: "gpt-2" in models_listed(gateway), "the fixed config")


def test_a_removed_model_answers_not_found_and_leaves_envoy(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    config = base(sim)
    config["models"].append({"name": "extra", "targets": [{"provider": "oa", "model": "x-up"}]})
    gateway.rewrite_config(config)
    wait_until(lambda: "extra" in models_listed(gateway), "the added model")
    extra = cluster_of_config(gateway, config, "extra")
    assert extra in envoy_clusters(gateway)

    gateway.rewrite_config(base(sim))
    wait_until(lambda: "extra" not in models_listed(gateway), "the model's removal")
    with pytest.raises(openai.NotFoundError, match="extra"):
        client(gateway).chat.completions.create(model="extra", messages=HELLO)
    wait_until(lambda: extra not in envoy_clusters(gateway), "the cluster's removal")


def test_sections_that_need_a_restart_are_logged_not_applied(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    config = {**base(sim), "limits": {"max_body_bytes": 1024}}
    gateway.rewrite_config(config)
    log = gateway.workdir / "extproc.log"
    wait_until(lambda: "apply at the next restart" in log.read_text(), "the restart notice")
    assert "limits" in log.read_text()
    big = [{"role": "user", "content": "x" * 4000}]
    assert client(gateway).chat.completions.create(model="gpt", messages=big).choices


def test_several_workers_all_take_the_new_config(
    sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]
) -> None:
    config = {**base(sim), "extproc": {"workers": 2}}
    gateway = gateway_factory(config)
    config["providers"][0]["api_key"] = "sk-everywhere"
    config["models"].append({"name": "gpt-2", "targets": [{"provider": "oa", "model": "gpt-up"}]})
    gateway.rewrite_config(config)
    wait_until(lambda: "gpt-2" in models_listed(gateway), "the new model")
    # Both workers (Envoy spreads streams over them) serve the new config.
    for _ in range(12):
        assert "gpt-2" in models_listed(gateway)
        client(gateway).chat.completions.create(model="gpt-2", messages=HELLO)
        assert sim.last_request("openai").headers["authorization"] == "Bearer sk-everywhere"
