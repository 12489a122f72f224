"""Install the dashboard test's browser: Debian's chromium and its chromedriver.

    python -m tests.install_browser     # a no-op when both are there

Part of README's test command, so a fresh Debian machine needs only that command; the
test itself never installs packages (it fails, naming this module, when they are
missing). apt runs through sudo when we are not root.
"""

from __future__ import annotations

import os
import subprocess

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DEBIAN_PACKAGES = ("chromium", "chromium-driver")


def missing() -> list[str]:
    return [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]


def install() -> None:
    if not missing():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    apt = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    subprocess.run([*apt, "update", "-qq"], check=True)
    subprocess.run([*apt, "install", "-y", "-qq", *DEBIAN_PACKAGES], check=True)


if __name__ == "__main__":
    install()
