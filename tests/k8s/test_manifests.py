"""k8s/ renders, validates and holds its policies, with no cluster.

Every overlay is rendered by `kubectl kustomize`, every object is checked against the
Kubernetes OpenAPI schemas (kubernetes-validate, offline), and the pod is checked the
way it will run: its llmux.yaml parses with the environment its Secrets give, the
bootstrap its init container renders passes `envoy --mode validate`, and the Envoy
probe/drain script works against a real Envoy.
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from extproc import children, config, server
from tests.k8s.render import OVERLAYS, ROOT, Obj, Rendered

KUBERNETES_VERSIONS = ["1.31.0", "1.37.0"]  # oldest and newest we promise to apply on
SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_-]{16,}"),  # OpenAI / Anthropic style keys
    re.compile(r"AIza[0-9A-Za-z_-]{30,}"),  # Google API keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"[a-z]+://[^/\s:@]*:[^/\s@$]+@"),  # a password inside a URL
]
SECRET_FIELD = re.compile(r"(api_?key|password|secret|token)", re.I)
ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


# --- helpers ------------------------------------------------------------------------


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


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


def free_port() -> int:
    return children.free_port()


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def envoy_version() -> str:
    out = run([children.envoy_binary(), "--version"], check=True).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    assert match, out
    return match.group(1)


# --- rendering and schemas -----------------------------------------------------------


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


# --- policies -----------------------------------------------------------------------


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


# --- the pod as it will run ------------------------------------------------------------


def test_llmux_yaml_is_valid_with_the_pods_environment(rendered: Rendered) -> None:
    cfg = llmux_config(rendered)
    assert cfg.listen.address == "0.0.0.0"
    spec = llmux_pod(rendered)
    envoy = container(spec, "envoy")
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert ports["http"] == cfg.listen.port
    service_ports = rendered.get("Service", "llmux")["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in service_ports] == [(8080, "http")]
    assert rendered.pod_env(envoy)["ENVOY_ADMIN_PORT"] == str(cfg.admin.port)
    extproc_env = rendered.pod_env(container(spec, "extproc"))
    assert extproc_env.get("LLMUX_HEALTH_PORT", "50051") == str(cfg.extproc.port)
    assert cfg.extproc.address == "127.0.0.1"


def test_init_container_and_extproc_share_image_config_and_environment(
    rendered: Rendered,
) -> None:
    spec = llmux_pod(rendered)
    init, extproc = container(spec, "render-envoy-config"), container(spec, "extproc")
    assert init["image"] == extproc["image"]
    assert init["envFrom"] == extproc["envFrom"]
    assert init["command"][-1] == (
        "exec llmux envoy-config --config /etc/llmux/llmux.yaml > /etc/envoy/envoy.json"
    )
    assert extproc["args"] == ["serve", "--config", "/etc/llmux/llmux.yaml"]
    mounts = {
        c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        for c in (init, extproc, container(spec, "envoy"))
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["render-envoy-config"]["/etc/llmux"] == mounts["extproc"]["/etc/llmux"]
    assert volumes[mounts["extproc"]["/etc/llmux"]]["configMap"]["name"].startswith("llmux-config-")
    shared = mounts["render-envoy-config"]["/etc/envoy"]
    assert "emptyDir" in volumes[shared] and mounts["envoy"]["/etc/envoy"] == shared
    envoy_args = container(spec, "envoy")["args"]
    assert envoy_args[envoy_args.index("--config-path") + 1] == "/etc/envoy/envoy.json"


def test_the_bootstrap_the_init_container_renders_passes_envoy_validate(
    rendered: Rendered,
    tmp_path: Path,
) -> None:
    spec = llmux_pod(rendered)
    llmux_yaml = tmp_path / "llmux.yaml"
    llmux_yaml.write_text(rendered.get("ConfigMap", "llmux-config")["data"]["llmux.yaml"])
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        **rendered.pod_env(container(spec, "render-envoy-config")),
    }
    result = run([sys.executable, "-m", "extproc", "envoy-config", "-c", str(llmux_yaml)], env=env)
    assert result.returncode == 0, result.stderr
    bootstrap = tmp_path / "envoy.json"
    bootstrap.write_text(result.stdout)
    check = run([children.envoy_binary(), "--mode", "validate", "-c", str(bootstrap)])
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_envoy_image_is_the_version_tests_validate_with(rendered: Rendered) -> None:
    image = container(llmux_pod(rendered), "envoy")["image"]
    assert image.startswith("envoyproxy/envoy:v")
    deployed = image.rsplit(":v", 1)[1].split(".")[:2]
    assert deployed == envoy_version().split(".")[:2], (
        f"{image} runs in the pod, but tests validate with Envoy {envoy_version()}"
    )


def test_shutdown_fits_in_the_grace_period(rendered: Rendered) -> None:
    spec = llmux_pod(rendered)
    envoy, extproc = container(spec, "envoy"), container(spec, "extproc")
    envoy_stop = envoy["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "POST '/drain_listeners?graceful'" in envoy_stop
    sleep = re.search(r"sleep (\d+)", envoy_stop)
    assert sleep, envoy_stop
    envoy_wait = int(sleep.group(1))
    args = envoy["args"]
    drain_time = int(args[args.index("--drain-time-s") + 1])
    extproc_wait = int(extproc["lifecycle"]["preStop"]["exec"]["command"][-1])
    extproc_drain = inspect.signature(server.serve).parameters["drain_seconds"].default
    assert drain_time < envoy_wait <= extproc_wait  # the ext_proc outlives Envoy's drain
    assert spec["terminationGracePeriodSeconds"] > extproc_wait + extproc_drain


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


# --- the Envoy probe and drain script, run against a real Envoy --------------------------


def test_envoy_probes_and_prestop_work_against_a_real_envoy(
    rendered_all: dict[str, Rendered],
    tmp_path: Path,
) -> None:
    dev = rendered_all["dev"]
    spec = llmux_pod(dev)
    envoy = container(spec, "envoy")
    script = tmp_path / "envoy-admin.sh"
    script.write_text(dev.get("ConfigMap", "llmux-envoy-scripts")["data"]["envoy-admin.sh"])
    mount = next(m["mountPath"] for m in envoy["volumeMounts"] if m["name"] == "envoy-scripts")

    def local(command: list[str]) -> list[str]:
        return [part.replace(f"{mount}/envoy-admin.sh", str(script)) for part in command]

    listen, admin = free_port(), free_port()
    llmux_yaml = tmp_path / "llmux.yaml"
    provider = {"name": "p", "type": "openai", "base_url": "http://127.0.0.1:9", "api_key": "x"}
    local_config = {
        "listen": {"address": "127.0.0.1", "port": listen},
        "admin": {"port": admin},
        "extproc": {"port": free_port(), "admin_port": free_port()},
        "providers": [provider],
        "models": [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}],
    }
    llmux_yaml.write_text(yaml.safe_dump(local_config))
    bootstrap = tmp_path / "envoy.json"
    rendering = [sys.executable, "-m", "extproc", "envoy-config", "-c", str(llmux_yaml)]
    bootstrap.write_text(run(rendering, check=True).stdout)
    args = list(envoy["args"])
    args[args.index("--config-path") + 1] = str(bootstrap)
    args[args.index("--drain-time-s") + 1] = "1"  # the manifest's 25 s, shortened
    args += ["--base-id", str(os.getpid() % 50000 + 7000)]
    env = {**os.environ, "ENVOY_ADMIN_PORT": str(admin)}
    log = tmp_path / "envoy.log"
    with log.open("wb") as out:
        command = [children.envoy_binary(), *args]
        proc = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)

    def probe(name: str) -> int:
        return run(local(envoy[name]["exec"]["command"]), env=env).returncode

    try:
        wait_until(lambda: probe("startupProbe") == 0, 20, "Envoy's startup probe")
        assert probe("readinessProbe") == 0 and probe("livenessProbe") == 0
        assert port_open(listen)
        assert run(["bash", str(script), "GET", "/no-such-page"], env=env).returncode != 0

        pre_stop = local(envoy["lifecycle"]["preStop"]["exec"]["command"])
        pre_stop[-1] = re.sub(r"sleep \d+", "sleep 0", pre_stop[-1])
        assert run(pre_stop, env=env).returncode == 0
        wait_until(lambda: not port_open(listen), 10, "the drained listener to close")
        assert probe("livenessProbe") == 0, "a draining Envoy must not be restarted"
    except BaseException:
        print(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    assert run(["bash", str(script), "GET", "/ready"], env=env).returncode != 0, "Envoy is gone"


# --- the deploy guide -----------------------------------------------------------------


def test_the_deploy_guide_matches_the_manifests(rendered_all: dict[str, Rendered]) -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
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
