"""usable_cpus: affinity capped by a cgroup quota, read from files a test can write."""

from __future__ import annotations

import os
from pathlib import Path

from extproc.config.cpus import usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def test_no_cgroup_files_means_the_affinity(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path / "cpu.max", tmp_path / "v1") == AFFINITY


def test_a_v2_quota_caps_the_count_rounding_up(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU
    assert usable_cpus(tmp_path / "cpu.max", tmp_path / "v1") == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path / "cpu.max", tmp_path / "v1") == AFFINITY


def test_a_v1_quota_caps_the_count(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path / "cpu.max", v1) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert usable_cpus(tmp_path / "cpu.max", v1) == AFFINITY


def test_a_quota_above_the_affinity_leaves_the_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text(f"{(AFFINITY + 3) * 100000} 100000\n")
    assert usable_cpus(tmp_path / "cpu.max", tmp_path / "v1") == AFFINITY
