"""How many CPUs this process may use: its affinity, capped by a cgroup CPU quota.

`os.cpu_count()` counts the host's cores. In a container limited to 2 CPUs on a
64-core node that is 64, and one ext_proc worker per core would mean 64 workers.
Reads only /proc-style files; nothing here changes anything.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")  # "max 100000" or "200000 100000"
_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")  # cpu.cfs_quota_us (-1: none), cpu.cfs_period_us


def usable_cpus(cgroup_v2: Path = _CGROUP_V2, cgroup_v1: Path = _CGROUP_V1) -> int:
    """CPUs this process may run on, at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _quota(cgroup_v2, cgroup_v1)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def _quota(cgroup_v2: Path, cgroup_v1: Path) -> float | None:
    """The CPU limit in CPUs, or None when there is none."""
    try:
        limit, period = cgroup_v2.read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
