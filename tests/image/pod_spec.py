"""The rendered dev overlay, turned into what `podman kube play` runs as the llmux pod.

Kept: the llmux Deployment's pod spec as rendered (init container, both containers,
probes, security contexts, volumes), its ConfigMaps and Secret. Left out: the objects
a single pod cannot use (Namespace, Services, NetworkPolicies, the PDB) and the
in-cluster Redis and Jaeger, whose images no registry here serves.

Changed, and only these, each for a stated reason:
* llmux.yaml (the ConfigMap's data, not the manifests): the provider's base_url points
  at the simulated provider on the pod's loopback, and `store` is dropped, since the
  dev overlay's Redis is a Service of another pod (`redis:6379`) that is not run here.
* `emptyDir: {medium: Memory}` on a volume that several containers mount: podman kube
  play gives each container its own tmpfs for it, so the bootstrap the init container
  renders would never reach Envoy. Without `medium` podman shares one volume, as a
  kubelet does with either. (A tmpfs-backed podman volume does not help: podman
  unmounts it once the init container exits, and the bootstrap goes with it.)
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.k8s.render import Obj, Rendered, all_containers, llmux_pod

SIMULATED_PROVIDER_PORT = 8099


def kube_play_objects(rendered: Rendered) -> list[Obj]:
    """The objects to play, adapted as the module docstring says."""
    deployment = rendered.get("Deployment", "llmux")
    spec = llmux_pod(rendered)
    for volume in shared_memory_volumes(spec):
        del volume["emptyDir"]["medium"]
    config = rendered.get("ConfigMap", "llmux-config")
    config["data"]["llmux.yaml"] = _with_simulated_provider(config["data"]["llmux.yaml"])
    kept = rendered.of_kind("ConfigMap") + rendered.of_kind("Secret")
    return [o for o in kept if o["metadata"]["name"].startswith("llmux-")] + [deployment]


def _with_simulated_provider(llmux_yaml: str) -> str:
    config: dict[str, Any] = yaml.safe_load(llmux_yaml)
    for provider in config["providers"]:
        provider["base_url"] = f"http://127.0.0.1:{SIMULATED_PROVIDER_PORT}"
    config.pop("store", None)
    return str(yaml.safe_dump(config))


def shared_memory_volumes(spec: Obj) -> list[Obj]:
    """The `emptyDir: {medium: Memory}` volumes that more than one container mounts."""
    mounted = [m["name"] for c, _ in all_containers(spec) for m in c.get("volumeMounts", [])]
    return [
        v
        for v in spec["volumes"]
        if mounted.count(v["name"]) > 1 and v.get("emptyDir", {}).get("medium") == "Memory"
    ]
