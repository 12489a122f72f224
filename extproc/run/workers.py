"""Run N ext_proc worker processes, one gRPC port each, and keep them running.

Envoy spreads ext_proc streams over the workers' ports (one endpoint each in the
`llmux_extproc` cluster). Workers share nothing in memory — the router and upstream
streams of one request may land on different workers — and share their Prometheus
metrics through a multiprocess directory, so any worker's /metrics (the admin port
is shared with SO_REUSEPORT) shows the sum. A worker that dies is restarted; the
requests it was serving are the only ones lost. A worker that can never start (it
exits with FATAL_EXIT, having said why) stops them all: a restart cannot help. The
supervisor also watches the config file and tells the workers (SIGHUP) when a new
one is in force.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from extproc.config.settings import Config
from extproc.run import reload
from extproc.run.children import FATAL_EXIT, serve_args


def run(config: Config, base_port: int, count: int, reloading: reload.Reloading) -> int:
    config_path = reloading.config_path
    metrics_dir = tempfile.mkdtemp(prefix="llmux-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    ports = [base_port + i for i in range(count)]
    procs = {port: _start(config_path, port, env) for port in ports}
    stopping = False

    def hang_up_workers(new: Config) -> None:
        # Envoy has the new config's clusters by now (see reload.py); workers re-read it.
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    reloader = reload.start(reloading, config, hang_up_workers)
    signal.signal(signal.SIGHUP, lambda signum, frame: reloader.hangup())

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while not stopping:
        for port, proc in list(procs.items()):
            if proc.poll() is None or stopping:
                continue
            if proc.returncode == FATAL_EXIT:  # it said why on stderr
                stop(signal.SIGTERM, None)
                code = FATAL_EXIT
            else:
                print(
                    f"llmux: worker on port {port} exited ({proc.returncode}); restarting",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(0.2)
                procs[port] = _start(config_path, port, env)
        time.sleep(0.1)
    reloader.stop()
    for proc in procs.values():
        proc.wait()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def _start(config_path: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # The supervisor watches the file; a worker reloads when it is told to (SIGHUP).
    return subprocess.Popen(serve_args(config_path, port, 1, watch_interval=0), env=env)
