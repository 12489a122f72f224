"""One podman and one llmux image build for the whole tests/image package.

Skips (one line, the reason) only when not root or when the Debian mirror cannot be
reached; everything else that goes wrong fails. Leaves no container, pod, volume,
mount or process behind, whether the checks pass or not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.image import podman_root, stand_ins


@dataclass
class Built:
    root: podman_root.PodmanRoot
    image: str
    seconds: dict[str, float] = field(default_factory=dict)  # what each step took


@pytest.fixture(scope="package")
def built(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Built]:
    reason = podman_root.unavailable_reason()
    if reason:
        pytest.skip(reason)
    xfer: Path = tmp_path_factory.mktemp("podman-xfer")
    with podman_root.cache_lock():
        started = time.monotonic()
        podman_root.prepare()
        seconds = {"debian roots": time.monotonic() - started}
        with podman_root.PodmanRoot(xfer) as root:
            started = time.monotonic()
            stand_ins.import_python_base(root)
            seconds["python base import"] = time.monotonic() - started
            seconds["llmux build"] = stand_ins.build_llmux(root)
            yield Built(root, stand_ins.LLMUX_IMAGE, seconds)
    steps = ", ".join(f"{step} {s:.0f} s" for step, s in seconds.items())
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\ntests/image took: {steps}")
