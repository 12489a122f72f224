"""Starting `llmux up` and the ext_proc when something is in the way.

A taken port or an unusable store is said in one line and ends the start, before
anything runs (no restart loop, no "did not listen in 20 s"). A second gateway on
the same ports never reports the first one's Envoy as its own, nor drains it. A
clean exit leaves no log folder behind unless asked to.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from extproc.envoy import bootstrap as envoy_config
from extproc.run import children
from tests.faults.kit import ROOT, Up, alive, descendants, up_config, wait_until
from tests.harness import Gateway, Valkey
from tests.simulated import SimulatedProviders

pytestmark = [pytest.mark.faults, pytest.mark.integration]
HELLO = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
START_BOUND_S = 15.0  # a start that cannot work must end this fast


def llmux(
    workdir: Path, command: str, config: dict[str, Any], *args: str
) -> subprocess.CompletedProcess[str]:
    """`python -m extproc COMMAND --config ... ARGS`, to its end; TMPDIR is `workdir`."""
    path = workdir / "llmux.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "extproc", command, "--config", str(path), *args]
    started = time.monotonic()
    with subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(workdir)},
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=START_BOUND_S)
        except subprocess.TimeoutExpired:
            stop_tree(proc)
            raise AssertionError(f"{command} still running after {START_BOUND_S:g}s") from None
    assert time.monotonic() - started < START_BOUND_S, stderr
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def stop_tree(proc: subprocess.Popen[str]) -> None:
    """SIGTERM `proc` (it stops its children), then SIGKILL whatever is left of it."""
    family = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=40)
    finally:
        for pid in [proc.pid, *family]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def listening(port: int) -> socket.socket:
    """Another program on `port`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def fatal_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("llmux: cannot start: ")]


@pytest.mark.parametrize(
    "name", ["listen.port", "admin.port", "extproc.port + 1", "extproc.admin_port"]
)
def test_up_names_a_taken_port_and_starts_nothing(
    tmp_path: Path, sim: SimulatedProviders, name: str
) -> None:
    config = up_config(sim, workers=2)
    section, _, field = name.partition(".")
    port = config[section][field.split()[0]] + (1 if name.endswith("+ 1") else 0)
    with listening(port):
        result = llmux(tmp_path, "up", config)
    assert result.returncode != 0
    assert f"llmux: port {port} ({name}) is in use" in result.stderr.splitlines()
    assert not list(tmp_path.glob("llmux-*")), "a log folder was made for a start that failed"


def test_a_second_up_leaves_the_first_one_serving(up: Up, tmp_path: Path) -> None:
    (tmp_path / "second").mkdir()
    second = llmux(tmp_path / "second", "up", up.config)
    assert second.returncode != 0
    assert f"port {up.port} (listen.port) is in use" in second.stderr
    assert "listening" not in second.stdout
    assert httpx.post(up.url + "/v1/chat/completions", json=HELLO, timeout=10).status_code == 200
    admin = f"http://127.0.0.1:{up.config['admin']['port']}"
    assert httpx.get(admin + "/ready").text.strip() == "LIVE"  # nobody drained it


def test_an_envoy_that_cannot_bind_is_never_taken_for_the_one_already_there(
    sim: SimulatedProviders, gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """The race the port check cannot close: a second Envoy on the first one's ports.
    The first one answers on both ports, but it is not the child just started."""
    first = gateway_factory(up_config(sim))
    bootstrap = tmp_path / "envoy.json"
    bootstrap.write_text(json.dumps(envoy_config.bootstrap(first.config)))
    with pytest.raises(children.ChildError, match="envoy cannot start: cannot bind"):
        children.start_envoy(
            bootstrap, first.port, tmp_path / "envoy.log", admin_port=first.config.admin.port
        )
    assert httpx.post(first.url + "/v1/chat/completions", json=HELLO, timeout=10).status_code == 200


def test_a_worker_that_cannot_bind_is_fatal_not_restarted(
    sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]
) -> None:
    """A restarted worker finds its port taken by another program: the supervisor stops."""
    gateway = gateway_factory(up_config(sim, workers=2))
    supervisor = gateway.procs[0]
    second_port = gateway.config.extproc.ports[1]
    (worker,) = [
        pid
        for pid in descendants(supervisor.pid)
        if f"--port {second_port} " in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    ]
    taker = socket.socket()
    taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    kill_and_take(worker, taker, second_port)
    with taker:
        assert supervisor.wait(START_BOUND_S) == children.FATAL_EXIT
    log = (gateway.workdir / "extproc.log").read_text()
    expected = f"llmux: cannot start: port {second_port} (extproc.port + 1) is in use"
    assert fatal_lines(log) == [expected]
    assert log.count("restarting") == 1, log


def kill_and_take(pid: int, sock: socket.socket, port: int) -> None:
    """Kill `pid` (it holds `port`) and take the port before its supervisor restarts it."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while True:
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def test_an_ext_proc_whose_admin_port_is_taken_says_so_once(
    tmp_path: Path, sim: SimulatedProviders
) -> None:
    config = up_config(sim)
    with listening(config["extproc"]["admin_port"]):
        result = llmux(tmp_path, "serve", config, "--workers", "1")
    assert result.returncode == children.FATAL_EXIT
    (line,) = result.stderr.splitlines()
    assert "cannot start" in line and "address already in use" in line


def test_up_says_why_the_store_cannot_be_used(
    tmp_path: Path, sim: SimulatedProviders, valkey: Valkey
) -> None:
    url = valkey.url.rsplit("/", 1)[0] + "/99"  # a database the server does not have
    config = up_config(sim, workers=2, store={"url": url})
    result = llmux(tmp_path, "up", config)
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("llmux:")]
    assert "DB index is out of range" in line and "ext_proc cannot start" in line, result.stderr
    assert "within" not in line  # not "did not listen within 20s"


def test_a_store_url_redis_cannot_take_is_refused_before_anything_starts(
    tmp_path: Path, sim: SimulatedProviders
) -> None:
    config = up_config(sim, store={"url": "valkey://127.0.0.1:1/0"})
    result = llmux(tmp_path, "up", config)
    assert result.returncode != 0
    assert "store.url: scheme must be redis://, rediss:// or unix://" in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize(
    ("args", "kept"),
    [((), False), (("--keep-logs",), True), (("--log-dir", "{tmp}/mine"), True)],
    ids=["default", "keep-logs", "log-dir"],
)
def test_a_clean_exit_removes_the_run_folder_unless_asked_to_keep_it(
    tmp_path: Path, sim: SimulatedProviders, args: tuple[str, ...], kept: bool
) -> None:
    server = Up(
        tmp_path,
        up_config(sim),
        *(a.format(tmp=tmp_path) for a in args),
        env={"TMPDIR": str(tmp_path)},
    )
    try:
        server.wait_listening()
        folder = Path(server.output.rsplit("(logs: ", 1)[1].split(")")[0])
        assert folder.is_dir() and (folder / "envoy.log").exists()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0
        wait_until(lambda: not any(alive(pid) for pid in server.children), timeout=5)
        assert folder.exists() == kept
    finally:
        server.kill_everything()
