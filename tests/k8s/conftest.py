"""Session fixtures: every overlay of k8s/, rendered once, with no cluster.

The k8s/ tree is copied to a temporary folder and each `*.env.example` is copied to
the `*.env` its secretGenerator reads, so real (gitignored) keys in a developer's
tree are never read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.k8s.render import K8S, OVERLAYS, Rendered, render


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copyfile(example, example.with_suffix(""))
    return tree


@pytest.fixture(scope="session")
def rendered_all(k8s_tree: Path) -> dict[str, Rendered]:
    return {name: Rendered(name, render(k8s_tree, name)) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, rendered_all: dict[str, Rendered]) -> Rendered:
    return rendered_all[request.param]
