"""Envoy's generated config and the ext_proc agree on the names in envoy/contract.py.

The bootstrap writes header, metadata and cluster names into Envoy's config; the
transport and the phases read and set them on every request. These checks read the
generated config the way Envoy would hand its values back, without starting Envoy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf import struct_pb2, text_format

from extproc.config import settings as config
from extproc.envoy import bootstrap, contract
from extproc.phases.actions import Continue
from extproc.transport import envoy_msgs
from extproc.transport.pb import base_pb2, ext_proc_pb2

CONFIG = """
providers:
  - {name: oa, type: openai, base_url: "http://127.0.0.1:9", api_key: KEY}
  - {name: an, type: anthropic, base_url: "http://127.0.0.1:10", api_key: KEY}
models:
  - name: duo
    targets: [{provider: oa, model: gpt-up}, {provider: an, model: claude-up}]
"""


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a generated document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def generated() -> tuple[config.Config, dict[str, Any]]:
    cfg = config.parse(CONFIG, env={})
    return cfg, bootstrap.bootstrap(cfg)


def test_each_ext_proc_filter_names_its_phase_in_the_streams_metadata() -> None:
    _, document = generated()
    phases = [
        (item["key"], item["value"])
        for node in walk(document)
        for item in node.get("initial_metadata", [])
    ]
    assert sorted(phases) == [
        (contract.PHASE_METADATA, contract.ROUTER_PHASE),
        (contract.PHASE_METADATA, contract.UPSTREAM_PHASE),
    ]


def test_the_route_of_a_model_matches_the_cluster_header_the_router_phase_sets() -> None:
    cfg, document = generated()
    cluster = contract.model_cluster_name(cfg, cfg.models[0])
    routes = [node for node in walk(document) if node.get("route", {}).get("cluster") == cluster]
    assert len(routes) == 1
    [route] = routes
    assert route["match"]["headers"] == [
        {"name": contract.CLUSTER_HEADER, "string_match": {"exact": cluster}}
    ]
    assert route["request_headers_to_remove"] == [contract.CLUSTER_HEADER]
    assert contract.CLUSTER_HEADER.startswith(contract.INTERNAL_PREFIX)


def test_the_transport_reads_each_endpoints_target_index_as_envoy_sends_it() -> None:
    _, document = generated()
    found = []
    for node in walk(document):
        ours = node.get("filter_metadata", {}).get(contract.METADATA_NAMESPACE)
        if ours is None:
            continue
        metadata = base_pb2.Metadata()
        metadata.filter_metadata[contract.METADATA_NAMESPACE].update(ours)
        request = ext_proc_pb2.ProcessingRequest()
        attributes = request.attributes["envoy.filters.http.ext_proc"]
        text = text_format.MessageToString(metadata, as_one_line=True)
        attributes.fields["xds.upstream_host_metadata"].string_value = text
        found.append((ours[contract.TARGET_KEY], envoy_msgs.upstream_target(request)))
    assert found == [(0, 0), (1, 1)]


def test_dynamic_metadata_the_router_phase_sets_reaches_envoy() -> None:
    _, document = generated()
    [receiving] = [
        n["receiving_namespaces"]["untyped"] for n in walk(document) if "receiving_namespaces" in n
    ]
    response = envoy_msgs.response_for(
        "request_body", Continue(dialect="anthropic", eligible_mask=2)
    )
    written: struct_pb2.Struct = response.dynamic_metadata
    assert set(written.fields) <= set(receiving)
    assert (
        written.fields[contract.DIALECT_NAMESPACE]
        .struct_value.fields[contract.DIALECT_KEY]
        .string_value
        == "anthropic"
    )
    # The mask names target 1 only: exactly that endpoint lists it in its subsets.
    mask = written.fields["envoy.lb"].struct_value.fields[contract.SUBSET_KEY].string_value
    listing = [
        node[contract.METADATA_NAMESPACE][contract.TARGET_KEY]
        for node in walk(document)
        if mask in node.get("envoy.lb", {}).get(contract.SUBSET_KEY, [])
    ]
    assert listing == [1]
    # Envoy's own error replies read the dialect from the same place.
    readers = [n["path"] for n in walk(document) if n.get("filter") == contract.DIALECT_NAMESPACE]
    assert readers and all(path == [{"key": contract.DIALECT_KEY}] for path in readers)


ORDERED = """
providers:
  - {name: oa, type: openai, base_url: "http://127.0.0.1:9", api_key: KEY}
  - {name: an, type: anthropic, base_url: "http://127.0.0.1:10", api_key: KEY}
models:
  - name: trio
    strategy: least_busy
    targets:
      - {provider: oa, model: a}
      - {provider: an, model: b, weight: 3}
      - {provider: oa, model: c, priority: 1}
  - name: weighted
    targets: [{provider: oa, model: a}, {provider: an, model: b}]
  - name: single
    strategy: round_robin
    targets: [{provider: oa, model: a}]
"""


def test_a_strategy_gets_one_ordered_cluster_per_first_target_with_a_route_each() -> None:
    cfg = config.parse(ORDERED, env={})
    resources = bootstrap.model_resources(cfg)
    trio, weighted, single = (contract.model_cluster_name(cfg, m) for m in cfg.models)
    ordered = [contract.ordered_cluster_name(trio, i) for i in range(3)]
    assert sorted(resources) == sorted([trio, *ordered, weighted, single])
    for name in ordered:
        cluster, route = resources[name]
        assert cluster["name"] == name
        assert route["match"]["headers"][0]["string_match"] == {"exact": name}
        policy = route["route"]["retry_policy"]
        assert policy["retry_priority"]["typed_config"]["update_frequency"] == 1
        assert policy["num_retries"] == 2
    # The main cluster keeps the tiers: previous_priorities moves on after a full tier.
    main_policy = resources[trio].route["route"]["retry_policy"]
    assert main_policy["retry_priority"]["typed_config"]["update_frequency"] == 2


def test_an_ordered_cluster_gives_each_target_its_own_priority_chosen_first() -> None:
    cfg = config.parse(ORDERED, env={})
    trio = contract.model_cluster_name(cfg, cfg.models[0])

    def levels(first: int) -> list[tuple[int, list[int]]]:
        cluster = bootstrap.model_resources(cfg)[contract.ordered_cluster_name(trio, first)].cluster
        return [
            (
                locality["priority"],
                [
                    e["metadata"]["filter_metadata"][contract.METADATA_NAMESPACE][
                        contract.TARGET_KEY
                    ]
                    for e in locality["lb_endpoints"]
                ],
            )
            for locality in cluster["load_assignment"]["endpoints"]
        ]

    # After the chosen target: the rest by tier, then the heaviest weight, then config order.
    assert levels(0) == [(0, [0]), (1, [1]), (2, [2])]
    assert levels(1) == [(0, [1]), (1, [0]), (2, [2])]
    assert levels(2) == [(0, [2]), (1, [1]), (2, [0])]
    assert bootstrap.attempt_order(cfg.models[0], 2) == [2, 1, 0]
    main = bootstrap.model_resources(cfg)[trio].cluster["load_assignment"]["endpoints"]
    assert [len(locality["lb_endpoints"]) for locality in main] == [2, 1]
