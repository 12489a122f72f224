"""The names Envoy's configuration and the ext_proc must agree on, in one place.

The bootstrap generator writes these names into Envoy's config; the phases and the
transport read or set them on every request. A name changed on one side only breaks
requests at run time, so both sides import it from here. This module holds constants
and one pure naming function; it imports nothing of ours at run time (the config
types are for the type checker only), so any layer may depend on it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from extproc.config.settings import Config, Model

# Request headers between the router phase and Envoy's route table.
CLUSTER_HEADER = "x-llmux-cluster"  # the model cluster the router phase chose
INTERNAL_PREFIX = "x-llmux-"  # ours: stripped from what clients send and providers see
# Response headers the client sees.
MODEL_HEADER = "x-llmux-model"  # the upstream model that answered
PROVIDER_HEADER = "x-llmux-provider"
CACHE_HEADER = "x-llmux-cache"
ATTEMPTS_HEADER = "x-llmux-attempts"
# count_tokens answers: "provider" (the target's own count endpoint) or "estimate" (ours).
TOKEN_COUNT_HEADER = "x-llmux-token-count"

# gRPC metadata on each ext_proc stream naming the filter that calls, and its values.
PHASE_METADATA = "x-llmux-phase"
ROUTER_PHASE = "router"
UPSTREAM_PHASE = "upstream"

# A held attempt response (issue #19) asks Envoy for its bound plus this margin; the
# upstream filter's max_message_timeout allows the longest bound plus the same margin.
HOLD_MARGIN_S = 5.0

# Endpoint metadata: which target of the model an endpoint is.
METADATA_NAMESPACE = "llmux"
TARGET_KEY = "llmux_target"
# The router phase tells Envoy which targets may serve a request (healthy, in quota)
# as a bitmask in dynamic metadata `envoy.lb`; each endpoint lists every mask that
# contains it, and the subset load balancer (list_as_any) keeps only those endpoints.
SUBSET_KEY = "llmux_set"
# The router phase names the client's dialect in dynamic metadata (llmux.dialect), so
# Envoy's own error replies take the client's shape without a header reaching providers.
DIALECT_NAMESPACE = "llmux"
DIALECT_KEY = "dialect"


def ordered_cluster_name(cluster: str, first: int) -> str:
    """The variant of a model's cluster whose attempts try target `first` first.

    A model with a routing strategy other than `weighted` has one per target: the
    router phase names the one its strategy chose (README, Routing: how a strategy's
    choice reaches Envoy).
    """
    return f"{cluster}_first{first}"


def model_cluster_name(config: Config, model: Model) -> str:
    """Named by what gives its endpoints their meaning: the targets and their providers.

    A reload that changes them makes a new cluster beside the old one, so attempts in
    flight keep the targets they were routed to (endpoints name targets by index).
    Cluster names never carry user strings.
    """
    spec: list[Any] = [model.name]
    for target in model.targets:
        provider = config.provider(target.provider)
        spec.append([*msgspec.structs.astuple(target), provider.type, provider.base_url])
    return "llmux_model_" + hashlib.sha256(msgspec.json.encode(spec)).hexdigest()[:16]
