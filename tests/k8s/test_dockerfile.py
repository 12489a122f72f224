"""The Dockerfile, linted statically (no Docker engine runs in CI), and its healthcheck
script run against a real ext_proc."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import yaml

from extproc.config import settings as config
from extproc.run import children
from tests.k8s.render import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
HEALTHCHECK_PATH = "/usr/local/bin/llmux-healthcheck"
VERSION_TAG = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*$")  # name:1.2.3[-variant]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, heredoc bodies skipped."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line, i = lines[i].strip(), i + 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line, i = line[:-1] + " " + lines[i].strip(), i + 1
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        heredoc = re.search(r'<<-?"?(\w+)"?', rest)
        if heredoc:
            while i < len(lines) and lines[i] != heredoc.group(1):
                i += 1
            i += 1
    return out


def stages() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(resolved base image, stage name, instructions) per FROM."""
    args: dict[str, str] = {}
    result: list[tuple[str, str, list[tuple[str, str]]]] = []
    for keyword, rest in instructions(DOCKERFILE):
        if keyword == "ARG" and not result and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            result.append((image, name, []))
        elif result:
            result[-1][2].append((keyword, rest))
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1][2]


def healthcheck_script() -> str:
    match = re.search(rf'<<"EOF" {HEALTHCHECK_PATH}\n(.*?)\nEOF\n', DOCKERFILE, re.S)
    assert match, "the healthcheck heredoc is missing"
    return match.group(1) + "\n"


def test_build_is_multi_stage_from_a_pinned_slim_base() -> None:
    found = stages()
    assert len(found) >= 2
    names = [name for _, name, _ in found]
    assert all(names), "every FROM names its stage (FROM ... AS name)"
    for image, _, _ in found:
        if image in names:
            continue
        assert VERSION_TAG.match(image), f"{image} is not pinned to a full version tag"
        assert "latest" not in image
    base = found[-1][0]
    assert base.startswith("python:") and "-slim" in base
    python = tuple(int(n) for n in base.split(":")[1].split("-")[0].split(".")[:2])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    assert python >= tuple(int(n) for n in minimum.split("."))
    assert ":latest" not in DOCKERFILE


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [rest for keyword, rest in final_stage() if keyword == "USER"]
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]


def test_final_stage_has_a_healthcheck_and_no_build_tools() -> None:
    final = final_stage()
    checks = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert json.loads(checks[0].split("CMD", 1)[1]) == [Path(HEALTHCHECK_PATH).name]
    text = " ".join(rest for _, rest in final)
    for tool in ("pip install", "apt-get", "gcc", "build-essential", "grpcio-tools", "COPY . "):
        assert tool not in text, f"the final stage uses {tool}"
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    build = stages()[0][1]
    assert f"--from={build} /opt/llmux /opt/llmux" in copies


def test_one_image_runs_both_roles() -> None:
    final = final_stage()
    assert ("ENTRYPOINT", '["llmux"]') in final
    assert ("CMD", '["serve", "--config", "/etc/llmux/llmux.yaml"]') in final
    usage = subprocess.run(
        [sys.executable, "-m", "extproc", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert "envoy-config" in usage and "serve" in usage


def test_build_context_holds_what_pip_install_reads() -> None:
    build = stages()[0][2]
    sources = [
        source.rstrip("/")
        for keyword, rest in build
        if keyword == "COPY"
        for source in rest.split()[:-1]
        if not source.startswith("--")
    ]
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is not in .dockerignore's allow-list"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["readme"] in sources
    assert any(r.startswith("grpcio-tools") for r in pyproject["build-system"]["requires"])
    assert "extproc/_proto/" in (ROOT / ".dockerignore").read_text().split()
    runs = " ".join(rest for keyword, rest in build if keyword == "RUN")
    assert "python -m venv /opt/llmux" in runs and "/opt/llmux/bin/pip install ." in runs


def test_healthcheck_script_follows_a_real_ext_proc(tmp_path: Path) -> None:
    script = tmp_path / "llmux-healthcheck"
    script.write_text(healthcheck_script())
    assert script.read_text().startswith("#!/opt/llmux/bin/python\n")  # the venv built above
    assert '"LLMUX_HEALTH_PORT", "50051"' in script.read_text()
    assert config.ExtProc().port == 50051
    port = children.free_port()
    llmux_yaml = tmp_path / "llmux.yaml"
    provider = {"name": "p", "type": "openai", "base_url": "http://127.0.0.1:9", "api_key": "x"}
    llmux_yaml.write_text(
        yaml.safe_dump(
            {
                "extproc": {"port": port, "admin_port": children.free_port()},
                "providers": [provider],
                "models": [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}],
            }
        )
    )
    env = {**os.environ, "LLMUX_HEALTH_PORT": str(port)}

    def healthy() -> bool:
        check = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, timeout=30
        )
        return check.returncode == 0

    assert not healthy(), "nothing listens yet"
    command = [sys.executable, "-m", "extproc", "serve", "-c", str(llmux_yaml)]
    log = tmp_path / "extproc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=out)
    try:
        children.wait_for_port(port, proc, 20, "ext_proc")  # cheaper than polling the script
        deadline = time.monotonic() + 20
        while not healthy():
            assert proc.poll() is None and time.monotonic() < deadline, "ext_proc never SERVING"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # drain: health turns NOT_SERVING, then the port closes
        deadline = time.monotonic() + 20
        while healthy():
            assert time.monotonic() < deadline, "still healthy after SIGTERM"
            time.sleep(0.1)
    except BaseException:
        print(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
