"""Hands model clusters and routes to a running Envoy through files it watches (CDS/RDS).

Envoy reloads a file when an entry is moved into its watched directory, so every
write is a rename. Model clusters are named by their targets (see
`contract.model_cluster_name`): a reload that changes a model adds a new
cluster beside the old one. Publishing a config therefore only adds: clusters
first (Envoy warms them), then the routes that name them, so no request meets a
route without its cluster. The clusters the new config no longer uses are
retired, and removed (routes first) once Envoy reports no request on them, so
requests in flight finish where they started.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from extproc.config.settings import Config
from extproc.envoy import bootstrap
from extproc.envoy.bootstrap import CDS_FILE, RDS_FILE, ROUTE_CONFIG, ModelResources

log = logging.getLogger("llmux.xds")

# Envoy's readouts of the version it applied from each file.
_CDS_VERSION = "cluster_manager.cds.version_text"
_RDS_VERSION = f"http.llmux.rds.{ROUTE_CONFIG}.version_text"
_WARMING = "cluster_manager.warming_clusters"
RETIRE_GRACE_S = 2.0  # ext_proc workers pick up the new config within this time
# Envoy reports a version once its main thread applied it; worker threads get it by a
# post to their event loops a moment later. Without this pause a 10-minute soak with a
# reload every 15 s saw 8 requests (of 60,000) meet "no route" right after reloads.
SETTLE_S = 0.2


class XdsError(Exception):
    """Envoy did not apply a new model configuration."""


class XdsPublisher:
    def __init__(
        self,
        directory: str | Path,
        admin_port: int,
        *,
        ack_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.ack_timeout_s = ack_timeout_s
        self.clock = clock
        self.current: dict[str, ModelResources] = {}
        # Cluster name -> (its resources, retired at, remove by at the latest).
        self.retired: dict[str, tuple[ModelResources, float, float]] = {}
        self.version = 0

    def publish(self, config: Config, *, wait: bool = True) -> None:
        """Make Envoy serve the new models' clusters and routes beside the old ones."""
        resources = bootstrap.model_resources(config)
        previous, previously_retired = self.current, dict(self.retired)
        now = self.clock()
        for name, old in self.current.items():
            if name not in resources:
                self.retired[name] = (old, now, now + config.timeouts.request_s)
        for name in resources:
            self.retired.pop(name, None)
        self.current = resources
        try:
            self._write((CDS_FILE, RDS_FILE), wait=wait)
        except XdsError:
            self.current, self.retired = previous, previously_retired
            self._write((CDS_FILE, RDS_FILE), wait=False)  # files match Envoy again
            raise

    def sweep(self) -> list[str]:
        """Remove retired clusters no request uses any more; returns their names."""
        now = self.clock()
        due = [name for name, (_, at, _) in self.retired.items() if now - at >= RETIRE_GRACE_S]
        if not due:
            return []
        active = self._stats([f"cluster.{name}.upstream_rq_active" for name in due])
        gone = [
            name
            for name in due
            if active.get(f"cluster.{name}.upstream_rq_active", 0) == 0
            or now >= self.retired[name][2]
        ]
        if gone:
            for name in gone:
                del self.retired[name]
            self._write((RDS_FILE, CDS_FILE), wait=True)
            log.info("removed %d retired model clusters from Envoy", len(gone))
        return gone

    def _write(self, order: tuple[str, str], *, wait: bool) -> None:
        self.version += 1
        version = f"{os.getpid()}-{self.version}"
        resources = {**{n: r for n, (r, _, _) in self.retired.items()}, **self.current}
        documents = bootstrap.xds_documents(resources, version)
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in order:
            _replace(self.directory / name, documents[name])
            if wait:
                self._await(_CDS_VERSION if name == CDS_FILE else _RDS_VERSION, version)
                time.sleep(SETTLE_S)

    def _await(self, readout: str, version: str) -> None:
        """Until Envoy reports `version` applied (and no cluster still warming)."""
        deadline = self.clock() + self.ack_timeout_s
        seen: dict[str, Any] = {}
        while self.clock() < deadline:
            seen = self._stats([readout, _WARMING])
            if seen.get(readout) == version and not seen.get(_WARMING):
                return
            time.sleep(0.02)
        raise XdsError(
            f"Envoy did not apply model config version {version} within "
            f"{self.ack_timeout_s:g}s (it reports {seen.get(readout)!r}; see Envoy's log)"
        )

    def _stats(self, names: list[str]) -> dict[str, Any]:
        pattern = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
        query = urllib.parse.urlencode({"format": "json", "filter": pattern})
        try:
            with urllib.request.urlopen(f"{self.admin}/stats?{query}", timeout=2) as response:
                stats = json.load(response).get("stats", [])
        except (OSError, ValueError) as exc:
            raise XdsError(f"Envoy's admin port did not answer: {exc}") from exc
        return {s["name"]: s.get("value") for s in stats if "name" in s}


def _replace(path: Path, document: dict[str, Any]) -> None:
    """Write then rename: Envoy reads the file only when it is moved into place."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        json.dump(document, out)
    os.replace(temporary, path)
