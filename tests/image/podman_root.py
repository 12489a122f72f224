"""Rootful podman on a machine with no container engine: a cached Debian root, entered.

    python -m tests.image.podman_root prepare        # build the cache (a no-op when warm)
    python -m tests.image.podman_root images         # any podman command, run inside it

Owns the cache folder (`$LLMUX_IMAGE_CACHE`, default /var/tmp/llmux-image): a Debian
trixie root with podman 5 and runc (bookworm's podman 4.3 cannot build the Dockerfile's
`COPY <<EOF` heredoc) and a bookworm root with Debian's python3, the stand-in for the
Dockerfile's `python:*-slim` base, which no registry here serves. Both come from the
Debian mirror apt already uses, by debootstrap, once; podman's image storage lives in
the trixie root, so built layers are cached between runs too.

`PodmanRoot` enters the trixie root in a private mount namespace with `pivot_root`
(a chroot is not enough: `podman exec` would land in the host's root) and runs podman
there with `nsenter`. Nothing it mounts is visible on the host, and closing it removes
every container, pod and volume and ends every process left running in that root
(leftovers.py), as does opening it after a run that was killed outright.
Builds nothing itself beyond the roots: the images are the callers' (stand_ins.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from tests.image import leftovers

CACHE = Path(os.environ.get("LLMUX_IMAGE_CACHE", "/var/tmp/llmux-image"))
PODMAN_ROOT, PYTHON_ROOT = CACHE / "podman-root", CACHE / "python-root"
# A changed recipe (packages, podman settings) rebuilds the cache from scratch.
PODMAN_PACKAGES = "podman,runc,catatonit,ca-certificates"
PYTHON_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
# crun refuses this hybrid cgroup v1 host; root here cannot raise ulimits past these.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""
RECIPE = f"trixie:{PODMAN_PACKAGES}\nbookworm:{PYTHON_PACKAGES}\n{CONTAINERS_CONF}"
STAMP = CACHE / "recipe"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "PODMAN_IGNORE_CGROUPSV1_WARNING": "1",
}
PR_SET_PDEATHSIG = 1  # prctl(2)
XFER = "/xfer"  # where the host's exchange folder appears inside the root

# Run in the new mount namespace by `unshare`; $1 = the root, $2 = the exchange folder.
ENTER_SCRIPT = """\
set -e
root=$1
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
mkdir -p "$root/xfer" "$root/.old-root"
mount --bind "$2" "$root/xfer"
cd "$root"
pivot_root . .old-root
umount -l /.old-root
echo entered
exec sleep infinity
"""


def debian_mirror() -> str:
    """The Debian archive apt uses here (deb822 `URIs:` or one-line `deb` entries)."""
    listed = sorted(Path("/etc/apt").glob("sources.list*/**/*"))
    sources = [*listed, Path("/etc/apt/sources.list")]
    for path in sources:
        text = path.read_text(errors="replace") if path.is_file() else ""
        for uri in re.findall(r"^(?:URIs:|deb)\s+(\S+)", text, re.M):
            uri = str(uri).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def unavailable_reason() -> str | None:
    """Why podman cannot be set up here, in one line; None when it can."""
    if os.geteuid() != 0:
        return "needs root (unshare, pivot_root and rootful podman)"
    if STAMP.exists() and STAMP.read_text() == RECIPE:
        return None  # warm: the mirror is not needed
    mirror = debian_mirror()
    try:
        urllib.request.urlopen(f"{mirror}/dists/trixie/Release", timeout=15).close()
    except OSError as exc:
        return f"the Debian mirror {mirror} cannot be reached ({exc})"
    return None


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Held while preparing or using the cache: two test runs never share one podman."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepare() -> None:
    """Build the cache unless it holds the current recipe (about 2 minutes cold).

    Call it holding `cache_lock()`.
    """
    if STAMP.exists() and STAMP.read_text() == RECIPE:
        return
    if shutil.which("debootstrap") is None:
        apt = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
        subprocess.run([*apt, "update", "-qq"], check=True)
        subprocess.run([*apt, "install", "-y", "-qq", "debootstrap"], check=True)
    STAMP.unlink(missing_ok=True)
    for stale in (PODMAN_ROOT, PYTHON_ROOT):
        shutil.rmtree(stale, ignore_errors=True)
    mirror = debian_mirror()
    # Both at once: mostly waiting on the mirror. Each in its own mount namespace, so
    # debootstrap's /proc mounts never reach the host, even when it is interrupted.
    runs = [
        _debootstrap("trixie", PODMAN_PACKAGES, PODMAN_ROOT, mirror),
        _debootstrap("bookworm", PYTHON_PACKAGES, PYTHON_ROOT, mirror),
    ]
    for proc, log in runs:
        if proc.wait() != 0:
            raise RuntimeError(f"debootstrap failed:\n{log.read_text()[-3000:]}")
    (PODMAN_ROOT / "etc/containers/containers.conf").write_text(CONTAINERS_CONF)
    _trust_host_certificates(PYTHON_ROOT)
    STAMP.write_text(RECIPE)


def _debootstrap(
    suite: str, packages: str, target: Path, mirror: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = CACHE / f"debootstrap-{suite}.log"
    command = ["debootstrap", "--variant=minbase", f"--include={packages}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", *command, suite, str(target), mirror],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def _trust_host_certificates(root: Path) -> None:
    """pip inside a build must trust what the host trusts (a TLS-inspecting proxy's CA)."""
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    shutil.copyfile(host_bundle, root / "usr/local/share/ca-certificates/host-bundle.crt")
    subprocess.run(["chroot", str(root), "update-ca-certificates"], check=True, capture_output=True)


class PodmanRoot:
    """The trixie root entered in a private mount namespace; podman runs inside it.

    Open it holding `cache_lock()`.
    `xfer` is a host folder that appears as /xfer inside (build contexts, configs).
    """

    def __init__(self, xfer: Path) -> None:
        self.xfer = xfer
        leftovers.end_processes_in(PODMAN_ROOT)  # from a run that was killed outright
        enter = ["unshare", "-m", "--propagation", "private", "sh", "-c", ENTER_SCRIPT]
        self._holder = subprocess.Popen(
            [*enter, "enter", str(PODMAN_ROOT), str(xfer)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "entered":
            _, stderr = self._holder.communicate()
            raise RuntimeError(f"entering {PODMAN_ROOT} failed: {stderr}")
        try:
            self.remove_all()  # what an interrupted earlier run left in podman's store
        except BaseException:
            self._end_namespace()
            raise

    def __enter__(self) -> PodmanRoot:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def run(
        self, *command: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the root (e.g. "podman", "ps"); output captured as text."""
        inside = ["nsenter", "-t", str(self._holder.pid), "-m", "--", "/usr/bin/env", "-i"]
        inside += [f"{k}={v}" for k, v in INSIDE_ENV.items()]
        result = subprocess.run(
            [*inside, *command], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)}: exit {result.returncode}\n{result.stderr}")
        return result

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return self.run("podman", *args, timeout=timeout, check=check).stdout

    def remove_all(self) -> None:
        """Every pod, container and volume goes; images stay (they are the cache)."""
        self.podman("pod", "rm", "--all", "--force", "--time", "0")
        self.podman("rm", "--all", "--force", "--time", "0")
        self.podman("volume", "rm", "--all", "--force")

    def close(self) -> None:
        if self._holder.poll() is None:
            try:
                self.remove_all()
                # Layers a changed tree made stale; a day's worth stay for the build cache.
                self.podman("image", "prune", "--force", "--filter", "until=24h")
            finally:
                self._end_namespace()

    def _end_namespace(self) -> None:
        self._holder.kill()
        self._holder.communicate(timeout=10)  # and close its pipes
        leftovers.end_processes_in(PODMAN_ROOT)  # only when removing containers failed


def _die_with_parent() -> None:
    """In the holder before exec: a test run killed outright takes its namespace along."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(args: list[str]) -> int:
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    with cache_lock():
        prepare()
        if args in ([], ["prepare"]):
            return 0
        xfer = CACHE / "xfer"
        xfer.mkdir(exist_ok=True)
        with PodmanRoot(xfer) as root:
            result = root.run("podman", *args, timeout=600, check=False)
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
