"""Bootstrap for the probe: one listener, one cluster per ext_proc mode (A at priority 0,
B at priority 1), each with an upstream ext_proc filter; llmux-like retry policy."""

import json
import sys

T = "type.googleapis.com/"
MODES = {
    # name: (response_body_mode, send_body_without_waiting_for_header_response)
    "streamed_nowait": ("STREAMED", True),
    "streamed_wait": ("STREAMED", False),
    "full_duplex": ("FULL_DUPLEX_STREAMED", False),
    "buffered_partial": ("BUFFERED_PARTIAL", False),
    # llmux-like: request body BUFFERED, response body NONE; the server switches the
    # response body to STREAMED with mode_override (x-override-at: req_headers | req_body)
    "override_nowait": ("NONE", True),
}
# route variants: name suffix -> retry timing
VARIANTS = {
    "": {"per_try_timeout": "20s"},
    "_pt": {"per_try_timeout": "1.5s"},
    "_idle": {"per_try_timeout": "20s", "per_try_idle_timeout": "1s"},
}


def sock(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def upstream_ext_proc(body_mode, nowait):
    cfg = {
        "@type": T + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "extproc"}},
        "failure_mode_allow": False,
        "message_timeout": "0.5s",
        "max_message_timeout": "30s",
        "processing_mode": {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "BUFFERED" if body_mode == "NONE" else "NONE",
            "response_body_mode": body_mode,
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SEND" if body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
        },
        "mutation_rules": {"allow_all_routing": True},
        "allow_mode_override": True,
    }
    if nowait:
        cfg["send_body_without_waiting_for_header_response"] = True
    return cfg


def cluster(name, body_mode, nowait, a, b):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [
                    {
                        "name": "probe.upstream",
                        "typed_config": upstream_ext_proc(body_mode, nowait),
                    },
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {
                            "@type": T
                            + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                        },
                    },
                ],
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"priority": 0, "lb_endpoints": [{"endpoint": {"address": sock(a)}}]},
                {"priority": 1, "lb_endpoints": [{"endpoint": {"address": sock(b)}}]},
            ],
        },
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


def retry_policy(extra):
    return {
        "retry_on": "connect-failure,refused-stream,reset-before-request,retriable-status-codes,5xx",
        "retriable_status_codes": [429],
        "num_retries": 1,
        **extra,
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": T
                + "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 1,
            },
        },
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": T
                    + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.01s"},
    }


def bootstrap(listen, admin, extproc, a, b):
    routes = []
    for mode in MODES:
        for suffix, extra in VARIANTS.items():
            routes.append(
                {
                    "match": {"prefix": f"/{mode}{suffix}/"},
                    "route": {
                        "cluster": mode,
                        "timeout": "30s",
                        "retry_policy": retry_policy(extra),
                    },
                }
            )
    hcm = {
        "@type": T
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "probe",
        "codec_type": "AUTO",
        "route_config": {
            "name": "probe",
            "virtual_hosts": [
                {
                    "name": "probe",
                    "domains": ["*"],
                    "include_request_attempt_count": True,
                    "include_attempt_count_in_response": True,
                    "routes": routes,
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    clusters = [cluster(m, bm, nw, a, b) for m, (bm, nw) in MODES.items()]
    clusters.append(
        {
            "name": "extproc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "extproc",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(extproc)}}]}],
            },
        }
    )
    return {
        "admin": {"address": sock(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": sock(listen),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        "envoy.reloadable_features.ext_proc_graceful_grpc_close": True
                    },
                }
            ]
        },
    }


if __name__ == "__main__":
    print(json.dumps(bootstrap(*map(int, sys.argv[1:6])), indent=1))
