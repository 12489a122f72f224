"""The two ext_proc filters Envoy runs, as configured in its bootstrap and clusters.

`llmux.router` (the listener's, once per client request) and `llmux.upstream` (a
multi-target model cluster's, once per attempt) call the same gRPC service, told
apart by `x-llmux-phase` metadata. This module builds plain dicts and does no I/O.
"""

from __future__ import annotations

from typing import Any

from extproc.config.settings import Config
from extproc.envoy.contract import (
    DIALECT_NAMESPACE,
    HOLD_MARGIN_S,
    PHASE_METADATA,
    ROUTER_PHASE,
    UPSTREAM_PHASE,
)
from extproc.envoy.local_replies import EXTPROC_FAILURE_STATUS

EXTPROC_CLUSTER = "llmux_extproc"
ROUTER_FILTER = "llmux.router"
UPSTREAM_FILTER = "llmux.upstream"
_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"


def seconds(value: float) -> str:
    """A protobuf Duration in its JSON form."""
    return f"{value:g}s"


def _processing_mode(**overrides: str) -> dict[str, str]:
    mode = {
        "request_header_mode": "SEND",
        "response_header_mode": "SKIP",
        "request_body_mode": "BUFFERED",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    mode.update(overrides)
    return mode


def _grpc_service(phase: str) -> dict[str, Any]:
    return {
        "envoy_grpc": {"cluster_name": EXTPROC_CLUSTER},
        "initial_metadata": [{"key": PHASE_METADATA, "value": phase}],
    }


def router_ext_proc(config: Config) -> dict[str, Any]:
    return {
        "@type": _EXT_PROC,
        "grpc_service": _grpc_service(ROUTER_PHASE),
        "failure_mode_allow": False,
        "message_timeout": f"{config.extproc.message_timeout_ms / 1000:g}s",
        "processing_mode": _processing_mode(),
        # Single-target models handle their response in this filter (see phases/router.py).
        "allow_mode_override": True,
        "status_on_error": {"code": EXTPROC_FAILURE_STATUS},
        "metadata_options": {"receiving_namespaces": {"untyped": ["envoy.lb", DIALECT_NAMESPACE]}},
    }


def upstream_ext_proc(config: Config) -> dict[str, Any]:
    """Per attempt: the response's headers are held until its first content (issue #19).

    Body chunks must reach the ext_proc while it holds its answer to the headers,
    so the body mode is STREAMED with send_body_without_waiting_for_header_response
    (which makes Envoy ignore mode_override: non-streamed answers arrive in chunks
    too, and the ext_proc buffers them). A hold may outlast message_timeout by
    asking for more time, up to max_message_timeout. See README "Stream-safe failover".
    """
    longest_hold = max(config.first_token_timeout_s, config.timeouts.attempt_s)
    return {
        "@type": _EXT_PROC,
        "grpc_service": _grpc_service(UPSTREAM_PHASE),
        "failure_mode_allow": False,
        "message_timeout": f"{config.extproc.message_timeout_ms / 1000:g}s",
        "max_message_timeout": seconds(longest_hold + HOLD_MARGIN_S),
        "processing_mode": _processing_mode(
            response_header_mode="SEND", response_body_mode="STREAMED"
        ),
        "send_body_without_waiting_for_header_response": True,
        "request_attributes": ["xds.upstream_host_metadata"],
        "mutation_rules": {"allow_all_routing": True},
        "status_on_error": {"code": EXTPROC_FAILURE_STATUS},
    }
