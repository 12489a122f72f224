"""The llmux image, built from the Dockerfile and run: what `docker run` users get.

Built once for the package (conftest.py) with rootful podman in a cached Debian root
(podman_root.py), on a stand-in for the `python:*-slim` base (stand_ins.py). Every
container runs with `--network none`: the checks need only the container's loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.image.conftest import Built
from tests.image.podman_root import XFER
from tests.image.stand_ins import ROOT, dockerfile_python_image

pytestmark = pytest.mark.timeout(600)  # the first test builds (minutes on a cold cache)

STOP_GRACE_SECONDS = 10  # `docker stop`'s default; the pod allows 75 s
IMAGE_BUDGET_MB = 400  # the whole image on the stand-in base (Debian's python3, ~240 MB)
OWN_LAYERS_BUDGET_MB = 120  # what the Dockerfile adds to its base: the venv


def inspect(built: Built, *args: str) -> Any:
    return json.loads(built.root.podman(*args))[0]


def run(built: Built, *args: str) -> str:
    return built.root.podman("run", "--rm", "--network", "none", *args)


def container_logs(built: Built, name: str) -> str:
    logs = built.root.run("podman", "logs", name, check=False)
    return logs.stdout + logs.stderr


@pytest.fixture(scope="module")
def serving(built: Built) -> Iterator[str]:
    """`serve` with examples/llmux.yaml on a read-only root, until its HEALTHCHECK passes.

    Like the pod, it gets a writable /tmp (Python's tempfile needs one; the pod mounts
    a 16 Mi emptyDir there) and nothing else writable.
    """
    (built.root.xfer / "llmux.yaml").write_bytes((ROOT / "examples/llmux.yaml").read_bytes())
    name = "llmux-serve"
    config = f"{XFER}/llmux.yaml:/etc/llmux/llmux.yaml:ro"
    built.root.podman(
        *("run", "--detach", "--name", name, "--network", "none"),
        *("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:size=16m"),
        *("--volume", config, built.image),
    )
    # podman runs HEALTHCHECK on systemd timers, which this root has not: run it here.
    deadline = time.monotonic() + 30
    while built.root.run("podman", "healthcheck", "run", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            logs = container_logs(built, name)
            pytest.fail(f"{name} never became healthy; its logs:\n{logs}")
        time.sleep(0.5)
    yield name
    built.root.podman("rm", "--force", "--time", "0", name)


def test_the_image_builds_from_a_clean_copy_of_the_tree(built: Built) -> None:
    context = built.root.xfer / "context"
    assert (context / "Dockerfile").exists() and not (context / "extproc/_proto").exists()
    config = inspect(built, "image", "inspect", built.image)["Config"]
    assert config["Entrypoint"] == ["llmux"]
    assert config["Cmd"] == ["serve", "--config", "/etc/llmux/llmux.yaml"]
    # setup.py generated the protobuf stubs inside the build (the copy had none).
    stubs = run(built, "--entrypoint", "python", built.image, "-c", "import extproc._proto")
    assert stubs == ""


def test_llmux_help_runs(built: Built) -> None:
    out = run(built, built.image, "--help")
    assert out.startswith("usage: llmux") and "serve" in out and "envoy-config" in out


def test_the_user_is_10001_and_the_root_filesystem_can_be_read_only(built: Built) -> None:
    assert inspect(built, "image", "inspect", built.image)["Config"]["User"] == "10001:10001"
    read_only = ("--read-only", "--read-only-tmpfs=false", "--entrypoint", "sh", built.image)
    out = run(built, *read_only, "-c", "id -u; id -g; touch /opt/llmux/x 2>&1 || echo refused")
    assert out.split("\n")[:2] == ["10001", "10001"]
    assert out.rstrip().endswith("refused"), out


def test_serve_becomes_healthy_by_the_images_own_healthcheck(built: Built, serving: str) -> None:
    # Kept only in Docker's image format (`--format docker`): OCI images have no healthcheck.
    healthcheck = inspect(built, "image", "inspect", built.image)["Healthcheck"]
    assert healthcheck["Test"] == ["CMD", "llmux-healthcheck"]
    state = inspect(built, "container", "inspect", serving)["State"]
    assert state["Running"] and state["Health"]["Status"] == "healthy"


def test_sigterm_exits_0_within_the_grace_period(built: Built, serving: str) -> None:
    started = time.monotonic()
    built.root.podman("stop", "--time", str(STOP_GRACE_SECONDS), serving)
    took = time.monotonic() - started
    state = inspect(built, "container", "inspect", serving)["State"]
    logs = container_logs(built, serving)
    assert state["ExitCode"] == 0, f"exit {state['ExitCode']} (137: killed); logs:\n{logs}"
    assert took < STOP_GRACE_SECONDS, f"took {took:.1f} s; logs:\n{logs}"


def test_the_image_size_stays_under_budget(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    size = inspect(built, "image", "inspect", built.image)["Size"] / 1e6
    base = inspect(built, "image", "inspect", dockerfile_python_image())["Size"] / 1e6
    with capsys.disabled():
        print(f"\nllmux image: {size:.0f} MB ({size - base:.0f} MB over its base {base:.0f} MB)")
    assert size < IMAGE_BUDGET_MB and size - base < OWN_LAYERS_BUDGET_MB
