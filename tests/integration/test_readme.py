"""README.md's code blocks, run as a reader would run them.

Every fenced block is either run here or named in NOT_RUN with the reason. YAML configs
go through `llmux check` with the variables they name set; the Python examples and the
admin `curl` commands run in a child process against a real gateway (Envoy, Valkey, the
ext_proc) built from `examples/llmux.yaml`, the simulated providers standing in for the
real ones, with only the addresses rewritten to the test's ports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import yaml

from tests.harness import Gateway, Valkey
from tests.simulated import SimulatedProviders

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ADMIN = "readme-admin-key"

# Blocks no test can run here, by their first line.
NOT_RUN = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && llmux up": (
        "installs and serves on fixed ports; its config is checked below"
    ),
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]'": (
        "the test command itself (CI runs it verbatim)"
    ),
    "pip install -e '.[examples]'": "an install; the test install brings the same SDKs",
    'RateLimit-Policy: "key";q=60;w=60': "response headers; test_rate_limit_headers.py checks them",
    "$EDITOR llmux.yaml": "interactive; test_reload.py covers reloading",
    "client ──HTTP──► Envoy listener": "a diagram",
    "Service llmux :8080": "a diagram",
    "docker build": "needs Docker; tests/image runs the same checks with podman",
    "sudo .venv/bin/pytest tests/image": "the image tests themselves (part of the suite)",
    "cp k8s/overlays": "needs a cluster; tests/k8s renders and validates every overlay",
    "kubectl": "needs a cluster; tests/k8s renders and validates every overlay",
}


class Block(NamedTuple):
    language: str
    code: str
    line: int

    @property
    def first_line(self) -> str:
        return self.code.strip().splitlines()[0]


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text()
    return [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
    ]


def blocks(language: str, contains: str = "") -> list[Block]:
    return [b for b in readme_blocks() if b.language == language and contains in b.code]


def not_run(block: Block) -> bool:
    return any(block.first_line.startswith(prefix) for prefix in NOT_RUN)


def run(args: list[str], cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = os.path.dirname(sys.executable)  # `llmux` of this environment
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": path, **env},
    )


def llmux_check(config: Path, env: dict[str, str]) -> None:
    result = run([sys.executable, "-m", "extproc", "check", "--config", str(config)], **env)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ configs


def test_every_block_is_run_or_says_why_not() -> None:
    run_here = [*blocks("yaml"), *blocks("python"), *blocks("sh", "curl")]
    for block in readme_blocks():
        assert block in run_here or not_run(block), f"README.md:{block.line} is never run"


@pytest.mark.parametrize("block", blocks("yaml"), ids=lambda b: f"line{b.line}")
def test_yaml_configs_pass_llmux_check(block: Block, tmp_path: Path) -> None:
    yaml.safe_load(block.code)  # valid YAML when copied verbatim
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", block.code)
    (tmp_path / "llmux.yaml").write_text(block.code)
    llmux_check(tmp_path / "llmux.yaml", {name: f"test-{name.lower()}" for name in names})


def test_the_quick_start_config_passes_llmux_check() -> None:
    assert "--config examples/llmux.yaml" in blocks("sh", "llmux up")[0].code
    llmux_check(ROOT / "examples" / "llmux.yaml", {})


# ------------------------------------------------------------------ against a gateway


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    example = yaml.safe_load((ROOT / "examples" / "llmux.yaml").read_text())
    example["providers"][0]["base_url"] = sim.base_url
    # The admin commands name a credential of the Configuration section's example.
    team_a = {"name": "team-a", "api_key": "sk-a", "rpm": 500}
    anthropic = {"name": "anthropic", "type": "anthropic", "base_url": sim.base_url}
    example["providers"].append({**anthropic, "credentials": [team_a]})
    example["auth"] = {"admin_key": ADMIN}
    example["cache"] = {"enabled": True}
    return gateway_factory(example, store_url=valkey.url)


def at_gateway(code: str, gateway: Gateway) -> str:
    """The block with README's local addresses replaced by the test gateway's."""
    code = code.replace("http://127.0.0.1:8080", gateway.url)
    return code.replace("http://127.0.0.1:9090", gateway.extproc_admin_url)


@pytest.mark.parametrize("block", blocks("python"), ids=lambda b: f"line{b.line}")
def test_python_examples_run_against_the_gateway(block: Block, gateway: Gateway) -> None:
    result = run([sys.executable, "-c", at_gateway(block.code, gateway)])
    assert result.returncode == 0, result.stderr
    # Every print is the simulated provider's answer (a stream's chunks make one line).
    answers = result.stdout.count("Hello from openai model gpt-4o-mini")
    assert answers == block.code.count("print("), result.stdout


@pytest.mark.parametrize("block", blocks("sh", "curl"), ids=lambda b: f"line{b.line}")
def test_admin_commands_run_against_the_gateway(
    block: Block, gateway: Gateway, tmp_path: Path
) -> None:
    created = httpx.post(
        gateway.extproc_admin_url + "/admin/keys",
        json={"name": "readme", "tenant": "acme"},
        headers={"authorization": f"Bearer {ADMIN}"},
    ).json()
    hello = [{"role": "user", "content": "Hello!"}]
    httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": hello}
    )
    shutil.copy(gateway.config_path, tmp_path / "llmux.yaml")  # for `llmux keys --config`
    # Each curl must succeed (2xx): README's placeholder key id is a real one here.
    script = 'curl() { command curl -sS --fail-with-body "$@"; }\n' + at_gateway(
        block.code.replace("key_0123abcd", created["id"]), gateway
    )
    result = run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, LLMUX_ADMIN_KEY=ADMIN)
    assert result.returncode == 0, result.stdout + result.stderr
