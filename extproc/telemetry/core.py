"""Metrics, traces and request logs: every name in one place.

Prometheus metrics live in one registry served on the admin port. Traces use the
OpenTelemetry SDK with the GenAI semantic conventions and join Envoy's spans
through the W3C `traceparent` Envoy sends with each ext_proc call; without an
OTLP endpoint no tracer is built and span calls cost nothing. Request logs are
one JSON line per request, never with bodies unless asked, never with secrets; the
same record feeds the admin dashboard's activity (activity.py).
Label values come from the config (provider, model names) or small fixed sets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from extproc.config.settings import Telemetry as TelemetryConfig
from extproc.telemetry.activity import Activity

log = logging.getLogger("llmux.request")

# gen_ai.provider.name values from the OpenTelemetry GenAI conventions.
GENAI_PROVIDER = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "ollama": "ollama",
}
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_PHASE = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


class Metrics:
    """The Prometheus side. Label children are cached: `labels()` costs microseconds."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmux_requests",
            "Client requests by outcome",
            ["client_api", "provider", "model", "status"],
            registry=r,
        )
        self.attempts = Counter(
            "llmux_upstream_attempts",
            "Upstream attempts",
            ["provider", "model", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "llmux_tokens", "Tokens used upstream", ["provider", "model", "type"], registry=r
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request",
            ["gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"],
            buckets=_TOKENS,
            registry=r,
        )
        self.duration = Histogram(
            "llmux_request_duration_seconds",
            "Upstream request time",
            ["provider", "model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "llmux_time_to_first_token_seconds",
            "Time to first token",
            ["provider", "model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tpot = Histogram(
            "llmux_time_per_output_token_seconds",
            "Time per output token",
            ["provider", "model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.phase = Histogram(
            "llmux_extproc_phase_seconds",
            "ext_proc processing per phase",
            ["filter", "phase"],
            buckets=_PHASE,
            registry=r,
        )
        self.cache = Counter("llmux_cache_lookups", "Cache lookups", ["outcome"], registry=r)
        self.rejections = Counter(
            "llmux_quota_rejections", "Requests refused by a limit", ["scope"], registry=r
        )
        self.fallbacks = Counter(
            "llmux_fallbacks", "Requests served after a failed attempt", ["model"], registry=r
        )
        self.cooldowns = Counter(
            "llmux_cooldowns", "Credentials put in cooldown after a 429", ["provider"], registry=r
        )
        self.upstream_errors = Counter(
            "llmux_upstream_errors", "Failed upstream attempts", ["provider", "kind"], registry=r
        )
        self.active = Gauge(
            "llmux_active_streams",
            "Open ext_proc streams",
            ["filter"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.store_errors = Counter("llmux_store_errors", "Redis errors", registry=r)
        self.auth_failures = Counter(
            "llmux_auth_failures", "Refused client keys", ["reason"], registry=r
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


def exposition_registry(metrics: Metrics) -> CollectorRegistry:
    """What /metrics shows: this process, or the sum of all workers (multiprocess mode).

    prometheus_client switches to shared mmap files when PROMETHEUS_MULTIPROC_DIR is
    set — workers.run sets it for its children.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return metrics.registry
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


class Tracing:
    """OpenTelemetry spans, or nothing when no OTLP endpoint is configured."""

    def __init__(self, settings: TelemetryConfig) -> None:
        self.settings = settings
        self.tracer: Any = None
        self.provider: Any = None
        if settings.otlp_endpoint:
            self._build(settings)

    def _build(self, settings: TelemetryConfig) -> None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        resource = Resource.create({"service.name": settings.service_name})
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        exporter = OTLPSpanExporter(
            endpoint=settings.otlp_endpoint,
            insecure=settings.insecure,
            headers=dict(settings.otlp_headers) or None,
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self.tracer = self.provider.get_tracer("llmux")

    def start(
        self,
        name: str,
        carrier: Mapping[str, str],
        attributes: dict[str, Any],
        client: bool = False,
    ) -> Any:
        """A span whose parent is the `traceparent` in `carrier`; None when tracing is off."""
        if self.tracer is None:
            return None
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(carrier=dict(carrier))
        kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        return self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


class Telemetry:
    def __init__(
        self, settings: TelemetryConfig, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        self.tracing = Tracing(settings)
        self.activity = Activity()

    def request_log(self, **fields: Any) -> None:
        """One JSON line per client request at info (see JsonFormatter).

        The record also goes to the dashboard's activity, whatever the log level.
        """
        if log.isEnabledFor(logging.INFO):
            log.info({k: v for k, v in fields.items() if v is not None})
        self.activity.record(fields)


class JsonFormatter(logging.Formatter):
    """Every log line as one JSON object; request logs carry their fields as a dict."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, dict):
            line.update(record.msg)
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def trace_id_of(span: Any) -> str | None:
    if span is None:
        return None
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.trace_id else None


def end_span(span: Any, attributes: dict[str, Any], error: str | None = None) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
