"""Find and end the processes still running in a root that podman_root.py entered.

A process belongs to that root when its mount table has the root bind-mounted at `/`
(what `pivot_root` left there); the containers that podman started from it are its
descendants (conmon's children). After a test run killed outright, they are the only
trace left: podman's runtime state lived in a tmpfs that went with the namespace,
so a later podman believes them stopped. Ending them is safe only while holding the
cache's lock: nothing else runs in that root then.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")


def end_processes_in(root: Path, *, wait_seconds: float = 10) -> list[int]:
    """SIGKILL every process that entered `root`, and their descendants; wait till gone."""
    found = _with_descendants(_entered(root))
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + wait_seconds
    while any((PROC / str(pid)).exists() for pid in found) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _entered(root: Path) -> list[int]:
    found = []
    for entry in PROC.iterdir():
        try:
            mounts = (entry / "mountinfo").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        # mountinfo(5): field 4 is the mount's root within its filesystem, 5 where it is.
        if any(line.split()[3:5] == [str(root), "/"] for line in mounts.splitlines()):
            found.append(int(entry.name))
    return found


def _with_descendants(pids: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], list(pids)
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found
