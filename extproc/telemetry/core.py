"""Metrics, traces and request logs: every name in one place.

Prometheus metrics live in one registry served on the admin port. Traces use the
OpenTelemetry SDK with the GenAI semantic conventions and join Envoy's spans
through the W3C `traceparent` Envoy sends with each ext_proc call; without an
OTLP endpoint no tracer is built and span calls cost nothing. Request logs are
one JSON line per request, never with bodies unless asked, never with secrets; the
same record (record.py) feeds the admin dashboard's activity (activity.py).
Label values come from the config (provider, model names) or small fixed sets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from extproc.config.settings import Telemetry as TelemetryConfig
from extproc.telemetry.activity import Activity
from extproc.telemetry.record import RequestRecord

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

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


UpstreamErrorKind = Literal["rate_limit", "server_error", "no_response"]
TokenType = Literal["input", "output"]
_M = TypeVar("_M", Counter, Gauge, Histogram)


class _Family(Generic[_M]):
    """One metric and its label children, cached: `labels()` costs microseconds."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: _M) -> None:
        self.metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def labels(self, *values: str) -> _M:
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = self.metric.labels(*values)
        return found


def _counter(
    registry: CollectorRegistry, name: str, documentation: str, labels: str
) -> _Family[Counter]:
    return _Family(Counter(name, documentation, labels.split(), registry=registry))


def _histogram(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labels: str,
    buckets: tuple[float, ...],
) -> _Family[Histogram]:
    return _Family(
        Histogram(name, documentation, labels.split(), buckets=buckets, registry=registry)
    )


class Metrics:
    """The Prometheus side: one method per metric, its labels as named parameters.

    Metric and label names are read by tests, dashboards and alerts: never rename them.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self._requests = _counter(
            r, "llmux_requests", "Client requests by outcome", "client_api provider model status"
        )
        self._attempts = _counter(
            r, "llmux_upstream_attempts", "Upstream attempts", "provider model status"
        )
        self._tokens = _counter(r, "llmux_tokens", "Tokens used upstream", "provider model type")
        self._token_usage = _histogram(
            r,
            "gen_ai_client_token_usage",
            "Tokens per request",
            "gen_ai_provider_name gen_ai_request_model gen_ai_token_type",
            _TOKENS,
        )
        self._duration = _histogram(
            r, "llmux_request_duration_seconds", "Upstream request time", "provider model", _LATENCY
        )
        self._ttft = _histogram(
            r,
            "llmux_time_to_first_token_seconds",
            "Time to first token",
            "provider model",
            _LATENCY,
        )
        self._tpot = _histogram(
            r,
            "llmux_time_per_output_token_seconds",
            "Time per output token",
            "provider model",
            _LATENCY,
        )
        self._phase = _histogram(
            r,
            "llmux_extproc_phase_seconds",
            "ext_proc processing per phase",
            "filter phase",
            _PHASE,
        )
        self._cache = _counter(r, "llmux_cache_lookups", "Cache lookups", "outcome")
        self._rejections = _counter(
            r, "llmux_quota_rejections", "Requests refused by a limit", "scope"
        )
        self._guardrails = _counter(
            r,
            "llmux_guardrail_actions",
            "Guardrail rules that matched, by what was done (never the matched text)",
            "rule action phase",
        )
        self._fallbacks = _counter(
            r, "llmux_fallbacks", "Requests served after a failed attempt", "model"
        )
        self._failovers = _counter(
            r,
            "llmux_failovers",
            "Attempts failed over after a 200, before any content reached the client",
            "provider reason",
        )
        self._cooldowns = _counter(
            r, "llmux_cooldowns", "Credentials put in cooldown after a 429", "provider"
        )
        self._upstream_errors = _counter(
            r, "llmux_upstream_errors", "Failed upstream attempts", "provider kind"
        )
        self._active = _Family(
            Gauge(
                "llmux_active_streams",
                "Open ext_proc streams",
                ["filter"],
                registry=r,
                multiprocess_mode="livesum",
            )
        )
        self._store_errors = Counter("llmux_store_errors", "Redis errors", registry=r)
        self._auth_failures = _counter(r, "llmux_auth_failures", "Refused client keys", "reason")
        self._cost = _counter(
            r,
            "llmux_cost_usd",
            "US dollars spent upstream, by the price table",
            "provider model key",
        )
        self._route_choices = _counter(
            r,
            "llmux_route_choices",
            "Targets a routing strategy chose to try first, and why",
            "model strategy provider upstream_model reason",
        )
        self._provider_limits = _counter(
            r,
            "llmux_provider_limit_exhausted",
            "Responses whose rate-limit headers said a credential is spent until a reset",
            "provider",
        )

    def request(self, client_api: str, provider: str, model: str, status: str) -> None:
        """A client request answered (`provider` is "cache" or "gateway" when no upstream)."""
        self._requests.labels(client_api, provider, model, status).inc()

    def attempt(self, provider: str, model: str, status: str) -> None:
        self._attempts.labels(provider, model, status).inc()

    def tokens(
        self, provider: str, genai_provider: str, model: str, kind: TokenType, count: int
    ) -> None:
        """Tokens one attempt used: the llmux counter and the GenAI-convention histogram."""
        self._tokens.labels(provider, model, kind).inc(count)
        self._token_usage.labels(genai_provider, model, kind).observe(count)

    def duration(self, provider: str, model: str, seconds: float) -> None:
        self._duration.labels(provider, model).observe(seconds)

    def time_to_first_token(self, provider: str, model: str, seconds: float) -> None:
        self._ttft.labels(provider, model).observe(seconds)

    def time_per_output_token(self, provider: str, model: str, seconds: float) -> None:
        self._tpot.labels(provider, model).observe(seconds)

    def phase(self, filter_name: str, phase: str, seconds: float) -> None:
        self._phase.labels(filter_name, phase).observe(seconds)

    def cache_lookup(self, outcome: str) -> None:
        self._cache.labels(outcome).inc()

    def rejection(self, scope: str) -> None:
        self._rejections.labels(scope).inc()

    def guardrail(self, rule: str, action: str, phase: str) -> None:
        self._guardrails.labels(rule, action, phase).inc()

    def fallback(self, model: str) -> None:
        self._fallbacks.labels(model).inc()

    def failover(self, provider: str, reason: str) -> None:
        self._failovers.labels(provider, reason).inc()

    def cooldown(self, provider: str) -> None:
        self._cooldowns.labels(provider).inc()

    def upstream_error(self, provider: str, kind: UpstreamErrorKind) -> None:
        self._upstream_errors.labels(provider, kind).inc()

    def active_streams(self, filter_name: str) -> Gauge:
        """The open-streams gauge of one filter: a stream increments it once, then decrements."""
        return self._active.labels(filter_name)

    def store_error(self) -> None:
        self._store_errors.inc()

    def auth_failure(self, reason: str) -> None:
        self._auth_failures.labels(reason).inc()

    def cost(self, provider: str, model: str, key: str | None, usd: float) -> None:
        """What one attempt cost (`llmux_cost_usd_total`); key is a key id, "" without one."""
        self._cost.labels(provider, model, key or "").inc(usd)

    def route_choice(
        self, model: str, strategy: str, provider: str, upstream_model: str, reason: str
    ) -> None:
        """A strategy's first target (`reason`: decisions/strategy.py's Reason values)."""
        self._route_choices.labels(model, strategy, provider, upstream_model, reason).inc()

    def provider_limit_exhausted(self, provider: str) -> None:
        self._provider_limits.labels(provider).inc()


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
        self.tracer: Tracer | None = None
        self.provider: TracerProvider | None = None
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
        self.provider = provider = TracerProvider(resource=resource, sampler=sampler)
        exporter = OTLPSpanExporter(
            endpoint=settings.otlp_endpoint,
            insecure=settings.insecure,
            headers=dict(settings.otlp_headers) or None,
        )
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self.tracer = provider.get_tracer("llmux")

    def start(
        self,
        name: str,
        carrier: Mapping[str, str],
        attributes: dict[str, Any],
        client: bool = False,
    ) -> Span | None:
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

    def request_log(self, record: RequestRecord) -> None:
        """One JSON line per client request at info (see JsonFormatter).

        The record also goes to the dashboard's activity, whatever the log level.
        """
        if log.isEnabledFor(logging.INFO):
            log.info(record.fields())
        self.activity.record(record)


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


def trace_id_of(span: Span | None) -> str | None:
    if span is None:
        return None
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.trace_id else None


def end_span(span: Span | None, attributes: dict[str, Any], error: str | None = None) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
