"""Config hot reload: notice a changed config file (or SIGHUP), validate, apply.

`Reloader.tick()` runs about once a second in the process that owns the config
(the single ext_proc process, or the worker supervisor). An invalid new config is
rejected with one log line and the running one stays. A valid one goes to Envoy
first (new model clusters and routes, see xds.py), then to the ext_proc: by the
time a worker names a new cluster, Envoy has it. Sections that shape processes
rather than requests (listen, admin, extproc, store, telemetry, limits) apply at
the next restart; a change to them is logged, the rest is applied.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec

from extproc.config import settings as config
from extproc.config.settings import Config
from extproc.envoy.bootstrap import model_resources
from extproc.envoy.xds import XdsError, XdsPublisher

log = logging.getLogger("llmux.reload")

RESTART_ONLY = ("listen", "admin", "extproc", "store", "telemetry", "limits")


class ConfigWatcher:
    """Tells when the config file's content changed and loads the new one."""

    def __init__(self, path: str | Path, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.env = os.environ if env is None else env
        self.seen = self._fingerprint()

    def _fingerprint(self) -> str | None:
        # By content, not mtime: Kubernetes swaps ConfigMap files through symlinks.
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def changed(self, *, forced: bool = False) -> Config | None:
        """The new config when the file changed (or `forced`) and is valid; else None."""
        fingerprint = self._fingerprint()
        if not forced and (fingerprint == self.seen or fingerprint is None):
            return None
        self.seen = fingerprint
        return self.load()

    def load(self) -> Config | None:
        try:
            return config.load(self.path, env=self.env)
        except config.ConfigError as exc:
            log.error("config reload rejected, the running config stays: %s", exc)
            return None


class Reloader:
    def __init__(
        self,
        watcher: ConfigWatcher,
        running: Config,
        apply: Callable[[Config], None],
        xds: XdsPublisher | None = None,
        *,
        static_envoy: bool = False,
    ) -> None:
        self.watcher = watcher
        self.running = running
        self.apply = apply
        self.xds = xds
        # Envoy runs from a bootstrap rendered once: its model clusters cannot change.
        self.static_envoy = static_envoy

    def tick(self, *, forced: bool = False) -> bool:
        """Check once (`forced`: load even if unchanged, as on SIGHUP); True if applied."""
        new = self.watcher.changed(forced=forced)
        applied = new is not None and self._apply(new)
        if self.xds is not None:
            try:
                self.xds.sweep()
            except XdsError as exc:
                log.warning("retired model clusters stay in Envoy for now: %s", exc)
        return applied

    def _apply(self, new: Config) -> bool:
        if self.static_envoy and model_resources(new) != model_resources(self.running):
            log.error(
                "config reload rejected, the running config stays: models, targets or "
                "provider addresses changed, and Envoy's model clusters are static here "
                "(run `llmux serve --xds-dir`, as `llmux up` and the Kubernetes manifests do)"
            )
            return False
        if self.xds is not None:
            try:
                self.xds.publish(new)
            except XdsError as exc:
                log.error("config reload rejected, the running config stays: %s", exc)
                return False
        later = [name for name in RESTART_ONLY if getattr(new, name) != getattr(self.running, name)]
        if later:
            log.warning("config reload: changes to %s apply at the next restart", ", ".join(later))
            new = msgspec.structs.replace(
                new, **{name: getattr(self.running, name) for name in later}
            )
        self.apply(new)
        self.running = new
        log.info("config reloaded: %d providers, %d models", len(new.providers), len(new.models))
        return True


class Reloading(NamedTuple):
    config_path: str
    xds_dir: str | None = None  # publish model clusters and routes to Envoy there
    # How often to look at the file. 0: only on SIGHUP, from a supervisor that owns the
    # file watch and Envoy's resources (the worker processes).
    interval_s: float = 1.0


class ReloadThread:
    """Ticks a Reloader off the event loop: file reads and Envoy's acks block."""

    def __init__(self, reloader: Reloader, interval_s: float) -> None:
        self.reloader = reloader
        self.interval_s = interval_s
        self.wake = threading.Event()
        self.forced = False
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="llmux-reload", daemon=True)

    def hangup(self) -> None:
        """SIGHUP: reload now, even if the file looks unchanged."""
        self.forced = True
        self.wake.set()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopped:
            self.wake.wait(self.interval_s or None)
            self.wake.clear()
            if self.stopped:
                return
            forced, self.forced = self.forced, False
            try:
                self.reloader.tick(forced=forced)
            except Exception:  # a reload must never take the gateway down
                log.exception("config reload failed; the running config stays")


def start(settings: Reloading, running: Config, apply: Callable[[Config], None]) -> ReloadThread:
    """Watch `settings.config_path` in a thread; the first publish to Envoy happens now."""
    xds = None
    if settings.xds_dir is not None:
        xds = XdsPublisher(settings.xds_dir, running.admin.port)
        xds.publish(running, wait=False)
    static_envoy = xds is None and settings.interval_s > 0
    reloader = Reloader(
        ConfigWatcher(settings.config_path), running, apply, xds, static_envoy=static_envoy
    )
    thread = ReloadThread(reloader, settings.interval_s)
    thread.thread.start()
    return thread
