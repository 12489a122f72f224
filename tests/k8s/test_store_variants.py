"""The prod overlay's store variants (one node, Cluster, Sentinel), each rendered and checked.

Every `LLMUX_STORE_URL=` line of k8s/overlays/prod/store.env.example, commented or not,
is put in store.env in turn: the overlay renders, the config the ext_proc gets parses
(store.url included), and the NetworkPolicy lets the pod reach every node it names.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from extproc.config import store_url
from tests.k8s.render import K8S, Rendered, llmux_config, render

EXAMPLE = K8S / "overlays" / "prod" / "store.env.example"
VARIANTS = re.findall(r"^#? ?LLMUX_STORE_URL=(\S+)$", EXAMPLE.read_text(), re.MULTILINE)


def test_the_example_documents_each_topology() -> None:
    topologies = sorted(store_url.parse(url).topology for url in VARIANTS)
    assert topologies == ["cluster", "sentinel", "single"], VARIANTS


@pytest.mark.parametrize("url", VARIANTS, ids=lambda u: u.partition(":")[0])
def test_each_variant_renders_parses_and_is_reachable(
    url: str, k8s_tree: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_tree, tree)
    (tree / "overlays" / "prod" / "store.env").write_text(f"LLMUX_STORE_URL={url}\n")
    prod = Rendered("prod", render(tree, "prod"))
    cfg = llmux_config(prod)  # raises on a store.url llmux would refuse
    assert cfg.store.url == url
    policy = prod.get("NetworkPolicy", "llmux")["spec"]
    egress = {
        p["port"] for rule in policy["egress"] for p in rule["ports"] if p["protocol"] == "TCP"
    }
    nodes = store_url.parse(url).nodes
    assert nodes and {port for _, port in nodes} <= egress, (nodes, egress)
