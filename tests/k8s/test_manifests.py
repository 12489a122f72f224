"""k8s/ renders, validates and holds its policies, with no cluster.

Every overlay is rendered by `kubectl kustomize`, every object is checked against the
Kubernetes OpenAPI schemas (kubernetes-validate, offline), the policies below hold
for every container, and README.md names what the manifests define. The pod
itself is run piece by piece in test_pod.py.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.k8s.render import (
    OVERLAYS,
    ROOT,
    Rendered,
    all_containers,
    container,
    llmux_config,
    llmux_pod,
    pod_specs,
)

KUBERNETES_VERSIONS = ["1.31.0", "1.37.0"]  # oldest and newest we promise to apply on
SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_-]{16,}"),  # OpenAI / Anthropic style keys
    re.compile(r"AIza[0-9A-Za-z_-]{30,}"),  # Google API keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"[a-z]+://[^/\s:@]*:[^/\s@$]+@"),  # a password inside a URL
]
SECRET_FIELD = re.compile(r"(api_?key|password|secret|token)", re.I)
ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


# --- helpers --------------------------------------------------------------------------


def secret_findings(text: str) -> list[str]:
    """Things that look like credentials in ConfigMap data (which is not secret)."""
    found = [p.pattern for p in SECRET_PATTERNS if p.search(text)]
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError:
        return found

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                literal = isinstance(value, str) and value and not ENV_REFERENCE.fullmatch(value)
                if SECRET_FIELD.search(str(key)) and literal:
                    found.append(f"{path}.{key} is a literal, not a ${{VAR}}")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(tree, "$")
    return found


# --- rendering and schemas ------------------------------------------------------------


def test_the_dev_and_prod_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_overlay_renders_a_complete_gateway(rendered: Rendered) -> None:
    kinds = {o["kind"] for o in rendered.objects}
    assert {
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    namespace = rendered.of_kind("Namespace")[0]["metadata"]["name"]
    for obj in rendered.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(rendered: Rendered, version: str) -> None:
    for obj in rendered.objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"prots": [{"port": 80}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[-1], strict=True)


# --- policies -------------------------------------------------------------------------


def test_every_container_has_probes_and_resource_limits(rendered: Rendered) -> None:
    for workload, spec in pod_specs(rendered):
        for c, is_init in all_containers(spec):
            where = f"{rendered.name} {workload} {c['name']}"
            assert {"cpu", "memory"} <= set(c.get("resources", {}).get("limits", {})), where
            assert {"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {})), where
            if not is_init:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert probe in c, f"{where}: no {probe}"


def test_every_image_is_pinned_by_tag(rendered: Rendered) -> None:
    for workload, spec in pod_specs(rendered):
        for c, _ in all_containers(spec):
            image = c["image"]
            if "@sha256:" in image:
                continue
            name, sep, tag = image.rpartition(":")
            assert sep and name and "/" not in tag, f"{workload} {c['name']}: {image} has no tag"
            assert re.search(r"\d", tag), f"{workload}: {image} is not a version tag"
            assert "latest" not in tag, f"{workload}: {image} floats"


def test_every_pod_runs_restricted(rendered: Rendered) -> None:
    for workload, spec in pod_specs(rendered):
        pod = spec.get("securityContext", {})
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), workload
        assert spec.get("automountServiceAccountToken") is False, workload
        for c, _ in all_containers(spec):
            ctx = c.get("securityContext", {})
            where = f"{rendered.name} {workload} {c['name']}"
            assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert ctx.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
            seccomp = ctx.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("privileged"), where
    for namespace in rendered.of_kind("Namespace"):
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_no_configmap_holds_a_secret(rendered: Rendered) -> None:
    for cm in rendered.of_kind("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            assert not SECRET_FIELD.search(key), f"{cm['metadata']['name']}: {key}"
            findings = secret_findings(text)
            assert not findings, (
                f"{rendered.name} ConfigMap {cm['metadata']['name']}/{key}: {findings}"
            )


def test_the_secret_scan_catches_literal_keys() -> None:
    assert secret_findings("providers:\n  - api_key: sk-proj-abcdefghijklmnopqrstuvwx\n")
    assert secret_findings("providers:\n  - api_key: hunter2\n")
    assert secret_findings("store: {url: 'redis://:hunter2@redis:6379/0'}\n")
    assert not secret_findings("providers:\n  - api_key: ${OPENAI_API_KEY}\n")
    assert not secret_findings("store:\n  url: ${LLMUX_STORE_URL}\n")


def test_no_real_key_is_committed() -> None:
    """Only *.env.example templates live in k8s/; k8s/.gitignore keeps real *.env out."""
    assert "*.env" in (ROOT / "k8s" / ".gitignore").read_text().split()
    for example in (ROOT / "k8s").rglob("*.env.example"):
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                assert "replace-with" in line, f"{example}: {line}"


def test_network_policy_admits_the_listener_and_what_the_pod_calls(rendered: Rendered) -> None:
    policy = rendered.get("NetworkPolicy", "llmux")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    cfg = llmux_config(rendered)
    ingress = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
    assert ingress == [cfg.listen.port]
    egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 53)} <= egress
    needed = {provider.url.port for provider in cfg.providers}
    assert cfg.store.url is not None
    needed.add(urlsplit(cfg.store.url).port or 6379)
    otlp = rendered.pod_env(container(llmux_pod(rendered), "extproc"))
    needed.add(urlsplit(otlp["OTEL_EXPORTER_OTLP_ENDPOINT"]).port or 4317)
    assert {("TCP", port) for port in needed} <= egress


def test_pdb_and_hpa_target_the_gateway(rendered: Rendered) -> None:
    selector = rendered.get("Deployment", "llmux")["spec"]["selector"]["matchLabels"]
    assert (
        rendered.get("PodDisruptionBudget", "llmux")["spec"]["selector"]["matchLabels"] == selector
    )
    assert rendered.get("Service", "llmux")["spec"]["selector"] == selector
    hpa = rendered.find("HorizontalPodAutoscaler", "llmux")
    if hpa is not None:
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "llmux",
        }
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


# --- overlays -------------------------------------------------------------------------


def test_dev_runs_one_replica_with_redis_and_jaeger(rendered_all: dict[str, Rendered]) -> None:
    dev = rendered_all["dev"]
    assert dev.get("Deployment", "llmux")["spec"]["replicas"] == 1
    assert dev.find("HorizontalPodAutoscaler", "llmux") is None
    cfg = llmux_config(dev)
    assert cfg.store.url == "redis://redis:6379/0"
    assert [p["port"] for p in dev.get("Service", "redis")["spec"]["ports"]] == [6379]
    env = dev.pod_env(container(llmux_pod(dev), "extproc"))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    jaeger = dev.get("Deployment", "jaeger")["spec"]["template"]["spec"]["containers"][0]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert {"name": "COLLECTOR_OTLP_ENABLED", "value": "true"} in jaeger["env"]
    jaeger_ports = {p["port"] for p in dev.get("Service", "jaeger")["spec"]["ports"]}
    assert {4317, 16686} <= jaeger_ports


def test_prod_runs_three_spread_replicas_on_external_services(
    rendered_all: dict[str, Rendered],
) -> None:
    prod = rendered_all["prod"]
    deployment = prod.get("Deployment", "llmux")["spec"]
    assert "replicas" not in deployment  # the HPA owns it
    assert prod.get("HorizontalPodAutoscaler", "llmux")["spec"]["minReplicas"] >= 3
    affinity = deployment["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchLabels"] == deployment["selector"]["matchLabels"]
    assert "LLMUX_STORE_URL" in prod.get("Secret", "llmux-store")["data"]
    assert "${LLMUX_STORE_URL}" in prod.get("ConfigMap", "llmux-config")["data"]["llmux.yaml"]
    env = prod.pod_env(container(llmux_pod(prod), "extproc"))
    assert urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname not in (None, "jaeger")
    assert prod.find("Deployment", "redis") is None and prod.find("Deployment", "jaeger") is None


# --- the deploy guide -----------------------------------------------------------------


def test_the_deploy_guide_matches_the_manifests(rendered_all: dict[str, Rendered]) -> None:
    text = (ROOT / "README.md").read_text()
    dev = rendered_all["dev"]
    namespace = dev.of_kind("Namespace")[0]["metadata"]["name"]
    for overlay in re.findall(r"kubectl (?:apply -k|kustomize) (k8s/[\w/]+)", text):
        assert (ROOT / overlay / "kustomization.yaml").exists(), overlay
    for path in re.findall(r"k8s/[\w./-]*\w", text):
        assert (ROOT / path).exists() or (ROOT / f"{path}.example").exists(), path
    for source, target in re.findall(r"cp (\S+\.env\.example) (\S+)", text):
        assert (ROOT / source).exists() and target == source.removesuffix(".example")
    forwards = re.findall(r"kubectl -n (\S+) port-forward svc/(\S+) (\d+):(\d+)", text)
    assert {name for _, name, _, _ in forwards} == {"llmux", "jaeger"}
    for ns, name, _, remote in forwards:
        assert ns == namespace
        assert int(remote) in [p["port"] for p in dev.get("Service", name)["spec"]["ports"]]
    local = next(port for _, name, port, _ in forwards if name == "llmux")
    assert f'base_url="http://127.0.0.1:{local}/v1"' in text
    for ns, name in re.findall(r"kubectl -n (\S+) rollout status deployment/(\S+)", text):
        assert ns == namespace and dev.find("Deployment", name) is not None
    for model in re.findall(r'model="([^"]+)"', text):
        assert llmux_config(dev).model(model) is not None, model
    spec = llmux_pod(dev)
    envoy = container(spec, "envoy")
    assert f"`{envoy['image']}`" in text
    assert f"--drain-time-s {envoy['args'][envoy['args'].index('--drain-time-s') + 1]}" in text
    assert f"terminationGracePeriodSeconds: {spec['terminationGracePeriodSeconds']}" in text
    assert f"uid {spec['securityContext']['runAsUser']}" in text
    assert f"docker build -t {container(spec, 'extproc')['image']} ." in text  # kind
    prod_image = container(llmux_pod(rendered_all["prod"]), "extproc")["image"]
    assert f"docker push {prod_image}" in text
    env = dev.pod_env(container(spec, "extproc"))
    assert f"`{env['OTEL_EXPORTER_OTLP_ENDPOINT']}`" in text
