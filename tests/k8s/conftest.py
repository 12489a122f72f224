"""Session fixtures: every overlay of k8s/, rendered once, with no cluster.

The k8s/ tree is rendered from a temporary copy whose secrets are the `*.env.example`
templates (render.example_tree).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s.render import OVERLAYS, Rendered, example_tree, render


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_tree(tmp_path_factory.mktemp("k8s"))


@pytest.fixture(scope="session")
def rendered_all(k8s_tree: Path) -> dict[str, Rendered]:
    return {name: Rendered(name, render(k8s_tree, name)) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, rendered_all: dict[str, Rendered]) -> Rendered:
    return rendered_all[request.param]
