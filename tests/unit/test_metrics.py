"""Each typed Metrics method lands on its Prometheus name with its labels in place.

Dashboards, alerts and the integration tests read these names and labels: a swapped
label or a renamed metric must fail here first.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from extproc.telemetry.core import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_counters_carry_their_labels() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.request("anthropic", "openai", "gpt-4o-mini", "200")
    metrics.attempt("openai", "gpt-4o", "429")
    metrics.cache_lookup("hit")
    metrics.rejection("key_rate")
    metrics.fallback("gpt-4o-mini")
    metrics.cooldown("openai")
    metrics.upstream_error("openai", "rate_limit")
    metrics.auth_failure("invalid")
    metrics.store_error()
    metrics.store_error()
    by_model = {"provider": "openai", "model": "gpt-4o-mini", "status": "200"}
    assert sample(metrics, "llmux_requests_total", client_api="anthropic", **by_model) == 1
    assert (
        sample(
            metrics,
            "llmux_upstream_attempts_total",
            provider="openai",
            model="gpt-4o",
            status="429",
        )
        == 1
    )
    assert sample(metrics, "llmux_cache_lookups_total", outcome="hit") == 1
    assert sample(metrics, "llmux_quota_rejections_total", scope="key_rate") == 1
    assert sample(metrics, "llmux_fallbacks_total", model="gpt-4o-mini") == 1
    assert sample(metrics, "llmux_cooldowns_total", provider="openai") == 1
    assert sample(metrics, "llmux_upstream_errors_total", provider="openai", kind="rate_limit") == 1
    assert sample(metrics, "llmux_auth_failures_total", reason="invalid") == 1
    assert sample(metrics, "llmux_store_errors_total") == 2


def test_route_choices_and_provider_limits() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.route_choice("chat", "least_latency", "openai", "gpt-4o", "fastest")
    metrics.provider_limit_exhausted("anthropic")
    choice = {
        "model": "chat",
        "strategy": "least_latency",
        "provider": "openai",
        "upstream_model": "gpt-4o",
        "reason": "fastest",
    }
    assert sample(metrics, "llmux_route_choices_total", **choice) == 1
    assert sample(metrics, "llmux_provider_limit_exhausted_total", provider="anthropic") == 1


def test_tokens_feed_the_counter_and_the_genai_histogram() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.tokens("azure-east", "azure.ai.openai", "gpt-4o", "input", 12)
    metrics.tokens("azure-east", "azure.ai.openai", "gpt-4o", "input", 3)
    labels = {"provider": "azure-east", "model": "gpt-4o", "type": "input"}
    assert sample(metrics, "llmux_tokens_total", **labels) == 15
    genai = {
        "gen_ai_provider_name": "azure.ai.openai",
        "gen_ai_request_model": "gpt-4o",
        "gen_ai_token_type": "input",
    }
    assert sample(metrics, "gen_ai_client_token_usage_count", **genai) == 2
    assert sample(metrics, "gen_ai_client_token_usage_sum", **genai) == 15


def test_cost_is_counted_in_dollars_per_provider_model_and_key() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.cost("openai", "gpt-4o-mini", "key_1", 0.25)
    metrics.cost("openai", "gpt-4o-mini", "key_1", 0.5)
    metrics.cost("openai", "gpt-4o-mini", None, 1.0)
    labels = {"provider": "openai", "model": "gpt-4o-mini"}
    assert sample(metrics, "llmux_cost_usd_total", key="key_1", **labels) == 0.75
    assert sample(metrics, "llmux_cost_usd_total", key="", **labels) == 1.0


def test_timings_and_the_stream_gauge() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.duration("openai", "gpt-4o", 0.5)
    metrics.time_to_first_token("openai", "gpt-4o", 0.25)
    metrics.time_per_output_token("openai", "gpt-4o", 0.125)
    metrics.phase("upstream", "response_body", 0.001)
    target = {"provider": "openai", "model": "gpt-4o"}
    assert sample(metrics, "llmux_request_duration_seconds_sum", **target) == 0.5
    assert sample(metrics, "llmux_time_to_first_token_seconds_sum", **target) == 0.25
    assert sample(metrics, "llmux_time_per_output_token_seconds_sum", **target) == 0.125
    phase = {"filter": "upstream", "phase": "response_body"}
    assert sample(metrics, "llmux_extproc_phase_seconds_count", **phase) == 1
    active = metrics.active_streams("router")
    assert metrics.active_streams("router") is active  # one child per label set, cached
    active.inc()
    active.inc()
    active.dec()
    assert sample(metrics, "llmux_active_streams", filter="router") == 1
