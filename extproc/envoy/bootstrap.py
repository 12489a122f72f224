"""llmux config -> Envoy bootstrap (one source of truth for both processes).

Layout of the generated bootstrap:
  listener -> HCM -> [ext_proc "llmux.router"] -> router
    The router-phase ext_proc parses the client body once, answers what it can
    itself, and names the model's cluster in `x-llmux-cluster`.
  one cluster per client model, one endpoint per target (priority/weight from the
  config, metadata naming the target) with an upstream (per-attempt) ext_proc
  "llmux.upstream" that translates the body for that attempt's provider.
Envoy's own retries move a failed attempt to the next target; Python never
proxies bytes. The model clusters and routes are Envoy's dynamic resources (CDS/RDS
files, see xds.py) so a config reload reaches Envoy without a restart.
This module builds plain dicts and does no I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from extproc.config.settings import Config, Model, Provider, UpstreamURL
from extproc.envoy.contract import (
    CLUSTER_HEADER,
    METADATA_NAMESPACE,
    SUBSET_KEY,
    TARGET_KEY,
    model_cluster_name,
    ordered_cluster_name,
)
from extproc.envoy.ext_proc_filters import (
    EXTPROC_CLUSTER,
    ROUTER_FILTER,
    UPSTREAM_FILTER,
    router_ext_proc,
    seconds,
    upstream_ext_proc,
)
from extproc.envoy.local_replies import local_reply_config

MAX_SUBSET_TARGETS = 8  # 2^(n-1) list entries per endpoint; larger models skip subsetting
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_T = "type.googleapis.com/"
_HCM = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = _T + "envoy.extensions.filters.http.router.v3.Router"
_CODEC = _T + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
_HTTP_OPTIONS = _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


# Model clusters and their routes are dynamic (CDS/RDS from files Envoy watches) so
# a config reload reaches Envoy without a restart; `llmux check` inlines them.
CDS_FILE = "cds.json"
RDS_FILE = "rds.json"
ROUTE_CONFIG = "llmux"
_CLUSTER_TYPE = _T + "envoy.config.cluster.v3.Cluster"
_ROUTE_TYPE = _T + "envoy.config.route.v3.RouteConfiguration"


class ModelResources(NamedTuple):
    cluster: dict[str, Any]
    route: dict[str, Any]


def model_resources(config: Config) -> dict[str, ModelResources]:
    """Per model cluster name: its Envoy cluster and the route that selects it."""
    resources = {}
    for model in config.models:
        name = model_cluster_name(config, model)
        resources[name] = ModelResources(
            _model_cluster(config, name, model), _model_route(config, name, model)
        )
        if not has_ordered_clusters(model):
            continue
        for first in range(len(model.targets)):
            ordered = ordered_cluster_name(name, first)
            order = attempt_order(model, first)
            resources[ordered] = ModelResources(
                _model_cluster(config, ordered, model, order),
                _model_route(config, ordered, model, ordered=True),
            )
    return resources


def has_ordered_clusters(model: Model) -> bool:
    """A strategy picks the first target: one cluster per possible first target.

    Envoy's load balancer cannot be told per request which host to try first and
    still fall back (the eligible-set subset binds every attempt of a request). So each
    ordered cluster puts every target on its own priority level, the chosen one at 0,
    and its route's retries leave each tried level behind (previous_priorities with
    update_frequency 1): attempt k goes to the k-th eligible target of that order.
    """
    return model.strategy != "weighted" and len(model.targets) > 1


def attempt_order(model: Model, first: int) -> list[int]:
    """The targets in the order attempts try them when `first` goes first.

    The rest follow by tier, then weight (heaviest first), then config order.
    """
    rest = sorted(
        (i for i in range(len(model.targets)) if i != first),
        key=lambda i: (model.targets[i].priority, -model.targets[i].weight, i),
    )
    return [first, *rest]


def xds_documents(resources: dict[str, ModelResources], version: str) -> dict[str, Any]:
    """The CDS and RDS files (DiscoveryResponse JSON) for these model resources."""
    clusters = [{"@type": _CLUSTER_TYPE, **r.cluster} for r in resources.values()]
    routes = [r.route for r in resources.values()]
    return {
        CDS_FILE: {"version_info": version, "resources": clusters},
        RDS_FILE: {
            "version_info": version,
            "resources": [{"@type": _ROUTE_TYPE, **_route_config(routes)}],
        },
    }


def bootstrap(
    config: Config, *, extproc_ports: list[int] | None = None, xds_dir: str | None = None
) -> dict[str, Any]:
    """Envoy's bootstrap; with `xds_dir`, model clusters and routes come from its files."""
    ports = extproc_ports or config.extproc.ports
    models = model_resources(config)
    clusters = [
        _extproc_cluster(config, ports),
        *([_otlp_cluster(config)] if config.telemetry.otlp_endpoint else []),
    ]
    document: dict[str, Any] = {"node": {"id": "llmux", "cluster": "llmux"}}
    if xds_dir is None:
        clusters += [r.cluster for r in models.values()]
        routes: dict[str, Any] = {"route_config": _route_config([r.route for r in models.values()])}
    else:
        cds = _path_source(xds_dir, CDS_FILE)
        document["dynamic_resources"] = {"cds_config": cds}
        routes = {
            "rds": {
                "route_config_name": ROUTE_CONFIG,
                "config_source": _path_source(xds_dir, RDS_FILE),
            }
        }
    document.update(
        {
            "admin": {"address": _socket("127.0.0.1", config.admin.port)},
            "static_resources": {"listeners": [_listener(config, routes)], "clusters": clusters},
            "layered_runtime": {
                "layers": [
                    {
                        "name": "static",
                        "static_layer": {
                            "overload.global_downstream_max_connections": 50000,
                            # Half-close each ext_proc stream after its last message instead
                            # of resetting it (README, Performance).
                            "envoy.reloadable_features.ext_proc_graceful_grpc_close": True,
                            # Envoy batches spans (default: 5 spans or 5 s); export within a second.
                            "tracing.opentelemetry.min_flush_spans": 1,
                            "tracing.opentelemetry.flush_interval_ms": 1000,
                        },
                    }
                ]
            },
        }
    )
    return document


def _path_source(directory: str, name: str) -> dict[str, Any]:
    """Envoy reloads the file when an entry is moved into the directory (atomic swaps)."""
    return {
        "resource_api_version": "V3",
        "path_config_source": {
            "path": str(Path(directory) / name),
            "watched_directory": {"path": str(directory)},
        },
    }


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _listener(config: Config, routes: dict[str, Any]) -> dict[str, Any]:
    hcm = {
        "@type": _HCM,
        "stat_prefix": "llmux",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "server_name": "llmux",
        "stream_idle_timeout": seconds(config.timeouts.idle_s),
        "request_timeout": "0s",  # bodies may stream slowly; idle timeout bounds them
        "local_reply_config": local_reply_config(),
        **routes,
        **({"tracing": _tracing(config)} if config.telemetry.otlp_endpoint else {}),
        "http_filters": [
            {"name": ROUTER_FILTER, "typed_config": router_ext_proc(config)},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
        ],
    }
    return {
        "name": "llmux",
        "address": _socket(config.listen.address, config.listen.port),
        "per_connection_buffer_limit_bytes": config.limits.max_body_bytes,
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


OTLP_CLUSTER = "llmux_otlp"


def _tracing(config: Config) -> dict[str, Any]:
    """Envoy's own spans go to the same collector; ext_proc calls carry `traceparent`."""
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _T + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": f"{config.telemetry.service_name}-envoy",
            },
        },
        "random_sampling": {"value": config.telemetry.sample_ratio * 100},
        "spawn_upstream_span": True,
    }


def _otlp_cluster(config: Config) -> dict[str, Any]:
    endpoint = config.telemetry.otlp_endpoint or ""
    url = UpstreamURL.parse(endpoint if "://" in endpoint else f"http://{endpoint}")
    cluster: dict[str, Any] = {
        "name": OTLP_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket(url.host, url.port)}}]}
            ],
        },
    }
    if url.tls:
        cluster["transport_socket"] = _tls_match()["transport_socket"]
    return cluster


def _route_config(model_routes: list[dict[str, Any]]) -> dict[str, Any]:
    # The last route is unreachable when the ext_proc works: it answers or names a
    # cluster for every request.
    fallback = {
        "match": {"prefix": "/"},
        "direct_response": {
            "status": 404,
            "body": {"inline_string": '{"error":{"message":"no route","type":"not_found"}}'},
        },
    }
    return {
        "name": ROUTE_CONFIG,
        "virtual_hosts": [
            {
                "name": "llmux",
                "domains": ["*"],
                "include_request_attempt_count": True,
                "include_attempt_count_in_response": True,
                "routes": [*model_routes, fallback],
            }
        ],
    }


def _model_route(
    config: Config, cluster: str, model: Model, *, ordered: bool = False
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "cluster": cluster,
        "timeout": seconds(config.timeouts.request_s),
        "idle_timeout": seconds(config.timeouts.idle_s),
        "auto_host_rewrite": True,
        "retry_policy": _retry_policy(config, model, ordered=ordered),
    }
    return {
        "match": {
            "prefix": "/",
            "headers": [{"name": CLUSTER_HEADER, "string_match": {"exact": cluster}}],
        },
        "route": route,
        "request_headers_to_remove": [CLUSTER_HEADER],  # chosen; no provider needs to see it
    }


def _retry_policy(config: Config, model: Model, *, ordered: bool = False) -> dict[str, Any]:
    """Fallback to the next target before the first byte reaches the client.

    previous_hosts moves a retry to another target of the tier; previous_priorities
    drops a tier once it had as many attempts as the largest tier has targets. In an
    ordered cluster every target is a tier of its own: each attempt drops the last.
    """
    if len(model.targets) == 1:
        # Nothing to fall back to: only resend a request that never reached the provider
        # (a pooled connection closed under us), never one it may have answered.
        return {
            "retry_on": "connect-failure,refused-stream,reset-before-request",
            "num_retries": 1,
            "per_try_timeout": seconds(config.timeouts.attempt_s),
            "per_try_idle_timeout": seconds(config.timeouts.idle_s),
        }
    tiers = [t.priority for t in model.targets]
    largest_tier = 1 if ordered else max(tiers.count(p) for p in set(tiers))
    attempts = config.routing.max_attempts or len(model.targets)
    return {
        "retry_on": "connect-failure,refused-stream,reset-before-request,retriable-status-codes,5xx",
        "retriable_status_codes": [429],
        "num_retries": max(0, attempts - 1),
        "per_try_timeout": seconds(config.timeouts.attempt_s),
        "per_try_idle_timeout": seconds(config.timeouts.idle_s),
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": _T + "envoy.extensions.retry.priority.previous_priorities.v3"
                ".PreviousPrioritiesConfig",
                "update_frequency": largest_tier,
            },
        },
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _T
                    + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.01s"},
    }


# Envoy's default circuit breakers allow 1,024 requests per cluster; a gateway holds
# one or two ext_proc streams per client request and long LLM streams, so lift them.
_CIRCUIT_BREAKERS = {
    "thresholds": [
        {
            "priority": "DEFAULT",
            "max_connections": 100000,
            "max_pending_requests": 100000,
            "max_requests": 100000,
            "max_retries": 10000,
        }
    ]
}


def _extproc_cluster(config: Config, ports: list[int]) -> dict[str, Any]:
    window = 16 * 1024 * 1024  # large prompts travel in one gRPC message
    endpoints = [{"endpoint": {"address": _socket(config.extproc.address, p)}} for p in ports]
    cluster: dict[str, Any] = {
        "name": EXTPROC_CLUSTER,
        "type": "STATIC",
        "circuit_breakers": _CIRCUIT_BREAKERS,
        "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": 2 * config.limits.max_body_bytes,
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "initial_stream_window_size": window,
                        "initial_connection_window_size": window,
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": EXTPROC_CLUSTER,
            "endpoints": [{"lb_endpoints": endpoints}],
        },
    }
    if len(ports) > 1:
        # A worker that stops answering is left alone for two seconds; the others serve.
        # (With one worker there is nobody else: Envoy would eject it anyway and keep
        # failing requests after it came back.)
        cluster["outlier_detection"] = {
            "consecutive_local_origin_failure": 1,
            "split_external_local_origin_errors": True,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "base_ejection_time": "2s",
            "max_ejection_time": "2s",
            "max_ejection_percent": 50,
            "interval": "1s",
        }
    return cluster


def _model_cluster(
    config: Config, name: str, model: Model, order: list[int] | None = None
) -> dict[str, Any]:
    """Tiers as Envoy priorities; with `order`, one priority per target in that order."""
    if order is None:
        priorities = sorted({t.priority for t in model.targets})
        levels = [[i for i, t in enumerate(model.targets) if t.priority == p] for p in priorities]
    else:
        levels = [[i] for i in order]
    localities = []
    for level, members in enumerate(levels):
        lb_endpoints = [
            _target_endpoint(
                config.provider(model.targets[i].provider),
                i,
                model.targets[i].weight,
                len(model.targets),
            )
            for i in members
        ]
        localities.append({"priority": level, "lb_endpoints": lb_endpoints})
    any_tls = any(config.provider(t.provider).url.tls for t in model.targets)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "circuit_breakers": _CIRCUIT_BREAKERS,
        "connect_timeout": f"{config.timeouts.connect_ms / 1000:g}s",
        "per_connection_buffer_limit_bytes": config.limits.max_body_bytes,
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: _upstream_options(
                config, any_tls, per_attempt=len(model.targets) > 1
            )
        },
        "load_assignment": {"cluster_name": name, "endpoints": localities},
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "outlier_detection": _outlier_detection(config),
    }
    if len(model.targets) <= MAX_SUBSET_TARGETS:
        cluster["lb_subset_config"] = {
            "subset_selectors": [{"keys": [SUBSET_KEY]}],
            "list_as_any": True,
            "fallback_policy": "ANY_ENDPOINT",  # no mask sent: every target may serve
        }
    if any_tls:
        cluster["transport_socket_matches"] = [_tls_match()]
    return cluster


def eligible_sets(target_index: int, target_count: int) -> list[str]:
    """Every eligible-target bitmask that includes this target (see SUBSET_KEY)."""
    if target_count > MAX_SUBSET_TARGETS:
        return []
    bit = 1 << target_index
    return [str(mask) for mask in range(1, 1 << target_count) if mask & bit]


def _outlier_detection(config: Config) -> dict[str, Any]:
    """Eject a target after `breaker.failures` failed connections, for the breaker's open time.

    The ext_proc may never see an attempt whose connection was refused (Envoy closes
    the per-attempt stream first), so Envoy itself keeps such targets out. HTTP-level
    failures (5xx, 429, timeouts) are counted by the ext_proc in Redis instead.
    """
    return {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": config.routing.breaker.failures,
        "enforcing_consecutive_local_origin_failure": 100,
        "enforcing_consecutive_5xx": 0,
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
        "enforcing_local_origin_success_rate": 0,
        "base_ejection_time": seconds(config.routing.breaker.open_s),
        "max_ejection_time": seconds(config.routing.breaker.open_s),
        "max_ejection_percent": 100,
        "interval": "1s",
    }


def _target_endpoint(
    provider: Provider, target_index: int, weight: int, count: int
) -> dict[str, Any]:
    url = provider.url
    return {
        "endpoint": {"address": _socket(url.host, url.port), "hostname": url.host},
        "load_balancing_weight": weight,
        "metadata": {
            "filter_metadata": {
                METADATA_NAMESPACE: {TARGET_KEY: target_index, "provider": provider.name},
                "envoy.transport_socket_match": {"tls": url.tls},
                "envoy.lb": {SUBSET_KEY: eligible_sets(target_index, count)},
            }
        },
    }


def _upstream_options(config: Config, tls: bool, *, per_attempt: bool) -> dict[str, Any]:
    """Several targets: translate per attempt (fallback may change provider type).

    One target: the router phase translates, and the cluster has no upstream filter.
    """
    options: dict[str, Any] = {
        "@type": _HTTP_OPTIONS,
        "explicit_http_config": {"http_protocol_options": {}},
        "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": tls},
    }
    if per_attempt:
        options["http_filters"] = [
            {"name": UPSTREAM_FILTER, "typed_config": upstream_ext_proc(config)},
            {"name": "envoy.filters.http.upstream_codec", "typed_config": {"@type": _CODEC}},
        ]
    return options


def _tls_match() -> dict[str, Any]:
    return {
        "name": "tls",
        "match": {"tls": True},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TLS,
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": CA_BUNDLE}}
                },
            },
        },
    }
