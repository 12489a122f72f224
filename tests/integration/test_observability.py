"""Traces into a real OTLP gRPC receiver, Prometheus metrics, logs and health endpoints."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from extproc.run.children import free_port
from tests.harness import Gateway, Valkey, provider_config
from tests.simulated import Fault, SimulatedProviders

pytestmark = pytest.mark.integration
HELLO = [{"role": "user", "content": "Say hello"}]
DATED = ("openai", "anthropic", "gemini", "ollama", "azure_openai")  # every backend


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace collector endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            {
                                "service": service,
                                "name": span.name,
                                "trace": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                            }
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace"] == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    sink = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield sink, port
    server.stop(0)


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders,
    valkey: Valkey,
    receiver: tuple[Receiver, int],
    gateway_factory: Callable[..., Gateway],
) -> Gateway:
    return gateway_factory(
        {
            "providers": [
                provider_config("primary", "openai", sim.base_url, "sk-p"),
                provider_config("backup", "anthropic", sim.base_url, "sk-b"),
                *(provider_config(kind, kind, sim.base_url, "sk-d") for kind in DATED[2:]),
            ],
            "models": [
                {"name": "traced", "targets": [{"provider": "primary", "model": "gpt-t"}]},
                *(
                    {"name": f"dated-{kind}", "targets": [{"provider": name, "model": "m-d"}]}
                    for kind, name in zip(DATED, ("primary", "backup", *DATED[2:]), strict=True)
                ),
                {
                    "name": "fallback",
                    "targets": [
                        {"provider": "primary", "model": "gpt-f", "priority": 0},
                        {"provider": "backup", "model": "claude-f", "priority": 1},
                    ],
                },
                {
                    "name": "rotating",
                    "strategy": "round_robin",
                    "targets": [
                        {"provider": "primary", "model": "gpt-r"},
                        {"provider": "backup", "model": "claude-r"},
                    ],
                },
            ],
            "cache": {"enabled": True},
            "telemetry": {"otlp_endpoint": f"http://127.0.0.1:{receiver[1]}"},
            "pricing": {"primary/gpt-t": {"input": 2.0, "output": 8.0}},
        },
        store_url=valkey.url,
    )


@pytest.fixture(autouse=True)
def _flush(valkey: Valkey) -> None:
    valkey.client().flushdb()


def traced_request(
    gateway: Gateway,
    receiver: Receiver,
    body: dict[str, Any],
    expect: Callable[[list[dict[str, Any]]], bool],
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    trace_id = f"{time.time_ns():032x}"[-32:]
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=10
    )
    deadline = time.monotonic() + 10
    while not expect(receiver.trace(trace_id)):
        assert time.monotonic() < deadline, receiver.trace(trace_id)
        time.sleep(0.1)
    return response, receiver.trace(trace_id)


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def assert_joined(spans: list[dict[str, Any]]) -> None:
    """Every ext_proc span hangs under an Envoy span of the same trace."""
    ids = {s["id"]: s for s in spans}
    envoy = [s for s in spans if s["service"].endswith("-envoy")]
    assert envoy, "no Envoy span in the trace"
    for span in spans:
        if span["service"] == "llmux":
            parent = ids.get(span["parent"])
            assert parent is not None, f"{span['name']} has no parent in the trace"
            assert parent["service"].endswith("-envoy")


def test_a_streamed_request_is_one_trace_with_genai_attributes(
    gateway: Gateway, receiver: tuple[Receiver, int]
) -> None:
    sink = receiver[0]
    body = {"model": "traced", "messages": HELLO, "stream": True}
    response, spans = traced_request(
        gateway,
        sink,
        body,
        lambda s: bool(by_name(s, "chat gpt-t")) and bool(by_name(s, "llmux.route")),
    )
    assert response.status_code == 200
    assert_joined(spans)
    (route,) = by_name(spans, "llmux.route")
    assert route["attributes"]["llmux.client_api"] == "openai"
    assert route["attributes"]["gen_ai.request.model"] == "traced"
    (chat,) = by_name(spans, "chat gpt-t")
    attributes = chat["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.response.model"] == "gpt-t"
    assert attributes["gen_ai.usage.output_tokens"] == 5
    assert attributes["gen_ai.usage.input_tokens"] >= 1
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["llmux.attempt"] == 1
    # $2 and $8 per 1M tokens, in dollars: the price table's cost of the reported usage
    cost = (attributes["gen_ai.usage.input_tokens"] * 2000 + 5 * 8000) / 1e9
    assert attributes["llmux.cost_usd"] == pytest.approx(cost)
    assert "Say hello" not in str(spans)  # content only when capture_content is on


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", DATED)
def test_response_model_is_the_one_the_provider_reported(
    gateway: Gateway,
    receiver: tuple[Receiver, int],
    sim: SimulatedProviders,
    kind: str,
    stream: bool,
) -> None:
    sim.configure(model_version="-2024-07-18")  # `m-d` answers as `m-d-2024-07-18`
    body = {"model": f"dated-{kind}", "messages": HELLO, "stream": stream}
    response, spans = traced_request(
        gateway, receiver[0], body, lambda s: bool(by_name(s, "chat m-d"))
    )
    assert response.status_code == 200, response.text
    (chat,) = by_name(spans, "chat m-d")
    assert chat["attributes"]["gen_ai.request.model"] == "m-d"
    assert chat["attributes"]["gen_ai.response.model"] == "m-d-2024-07-18"


def test_a_fallback_shows_both_attempts(
    gateway: Gateway, receiver: tuple[Receiver, int], sim: SimulatedProviders
) -> None:
    sim.inject(Fault.error(500), provider="openai")
    body = {"model": "fallback", "messages": HELLO}
    response, spans = traced_request(
        gateway, receiver[0], body, lambda s: bool(by_name(s, "chat claude-f"))
    )
    assert response.status_code == 200
    assert_joined(spans)
    (failed,) = by_name(spans, "chat gpt-f")
    (served,) = by_name(spans, "chat claude-f")
    assert failed["attributes"]["llmux.attempt"] == 1
    assert failed["attributes"]["http.response.status_code"] == 500
    assert served["attributes"]["llmux.attempt"] == 2
    assert served["attributes"]["gen_ai.provider.name"] == "anthropic"


def test_the_route_span_says_which_strategy_chose_and_why(
    gateway: Gateway, receiver: tuple[Receiver, int]
) -> None:
    body = {"model": "rotating", "messages": HELLO}
    response, spans = traced_request(
        gateway, receiver[0], body, lambda s: bool(by_name(s, "llmux.route"))
    )
    assert response.status_code == 200
    (route,) = by_name(spans, "llmux.route")
    assert route["attributes"]["llmux.route.strategy"] == "round_robin"
    assert route["attributes"]["llmux.route.reason"] == "turn"
    labels = {
        "model": "rotating",
        "strategy": "round_robin",
        "provider": response.headers["x-llmux-provider"],
        "upstream_model": response.headers["x-llmux-model"],
        "reason": "turn",
    }
    metrics = httpx.get(f"{gateway.extproc_admin_url}/metrics").text
    assert metric(metrics, "llmux_route_choices_total", **labels) == 1


def test_a_cache_hit_is_traced(gateway: Gateway, receiver: tuple[Receiver, int]) -> None:
    body = {"model": "traced", "messages": [{"role": "user", "content": "cache me"}]}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body).status_code == 200
    response, spans = traced_request(
        gateway,
        receiver[0],
        body,
        lambda s: any(
            x["attributes"].get("llmux.cache") == "hit" for x in by_name(s, "llmux.route")
        ),
    )
    assert response.headers["x-llmux-cache"] == "hit"
    assert_joined(spans)
    assert not [s for s in spans if s["name"].startswith("chat ")]  # no upstream attempt


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_a_known_sequence_exactly(gateway: Gateway, sim: SimulatedProviders) -> None:
    before = httpx.get(gateway.extproc_admin_url + "/metrics").text
    base = {
        name: metric(before, name, **labels)
        for name, labels in {
            "llmux_requests_total": {"provider": "primary", "model": "traced", "status": "200"},
            "llmux_tokens_total": {"provider": "primary", "model": "gpt-t", "type": "output"},
            "llmux_cache_lookups_total": {"outcome": "hit"},
            "llmux_fallbacks_total": {"model": "fallback"},
            "llmux_upstream_errors_total": {"provider": "primary", "kind": "server_error"},
        }.items()
    }
    for i in range(3):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "traced", "messages": [{"role": "user", "content": f"m{i}"}]},
        )
    httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "traced", "messages": [{"role": "user", "content": "m0"}]},
    )  # hit
    sim.inject(Fault.error(500), provider="openai")
    httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "fallback", "messages": HELLO})
    after = httpx.get(gateway.extproc_admin_url + "/metrics").text
    assert (
        metric(after, "llmux_requests_total", provider="primary", model="traced", status="200")
        - base["llmux_requests_total"]
        == 3
    )
    assert (
        metric(after, "llmux_tokens_total", provider="primary", model="gpt-t", type="output")
        - base["llmux_tokens_total"]
        == 15
    )
    assert (
        metric(after, "llmux_cache_lookups_total", outcome="hit")
        - base["llmux_cache_lookups_total"]
        == 1
    )
    assert (
        metric(after, "llmux_fallbacks_total", model="fallback") - base["llmux_fallbacks_total"]
        == 1
    )
    assert (
        metric(after, "llmux_upstream_errors_total", provider="primary", kind="server_error")
        - base["llmux_upstream_errors_total"]
        == 1
    )
    assert metric(after, "llmux_active_streams", filter="router") == 0
    assert "gen_ai_client_token_usage_bucket" in after
    assert "llmux_extproc_phase_seconds_bucket" in after
    assert "sk-p" not in after and "Say hello" not in after


def test_health_endpoints(gateway: Gateway) -> None:
    assert httpx.get(gateway.extproc_admin_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.extproc_admin_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["store"] == "ok"
    assert "providers" not in ready.json()


def test_deep_readiness_probes_each_provider(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = gateway_factory(
        {
            "providers": [
                provider_config("up", "openai", sim.base_url, "sk-probe-secret"),
                provider_config("down", "openai", dead, "sk-probe-secret"),
            ],
            "models": [{"name": "m", "targets": [{"provider": "up", "model": "x"}]}],
        },
        store_url=valkey.url,
    )
    deep = httpx.get(gateway.extproc_admin_url + "/readyz", params={"deep": "true"}, timeout=10)
    statuses = {p["provider"]: p["status"] for p in deep.json()["providers"]}
    assert statuses == {"up": "ok", "down": "unreachable"}
    assert sim.last_request("openai").headers["authorization"] == "Bearer sk-probe-secret"
    assert "sk-probe-secret" not in deep.text


def test_request_logs_are_json_lines_without_secrets(gateway: Gateway) -> None:
    httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "traced", "messages": HELLO})
    import json

    lines = [
        json.loads(line)
        for line in (gateway.workdir / "extproc.log").read_text().splitlines()
        if '"llmux.request"' in line
    ]
    assert lines
    last = lines[-1]
    for field in (
        "request_id",
        "client_api",
        "provider",
        "model",
        "status",
        "duration_ms",
        "cache",
        "cost_usd",
    ):
        assert field in last
    text = (gateway.workdir / "extproc.log").read_text()
    assert "sk-p" not in text and "sk-b" not in text and "Say hello" not in text


def test_workers_share_the_load_and_their_metrics(
    sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]
) -> None:
    gateway = gateway_factory(
        {
            "providers": [provider_config("o", "openai", sim.base_url, "sk-w")],
            "models": [{"name": "m", "targets": [{"provider": "o", "model": "x"}]}],
            "extproc": {"workers": 2},
        }
    )
    for _ in range(20):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions", json={"model": "m", "messages": HELLO}
        )
        assert response.status_code == 200
    text = httpx.get(gateway.extproc_admin_url + "/metrics").text
    assert metric(text, "llmux_requests_total", provider="o", model="m", status="200") == 20
    assert (
        metric(text, "llmux_extproc_phase_seconds_count", filter="router", phase="request_body")
        == 20
    )
    clusters = httpx.get(gateway.admin_url + "/clusters").text
    per_worker = {
        port: sum(
            int(line.rsplit("::", 1)[1])
            for line in clusters.splitlines()
            if line.startswith(f"llmux_extproc::127.0.0.1:{port}::rq_total::")
        )
        for port in gateway.config.extproc.ports
    }
    assert all(count > 0 for count in per_worker.values()), per_worker
