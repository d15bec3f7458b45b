"""Usable cores from the cgroup CPU quota (server/cpus.py): fake cgroup trees, then a real cgroup.

A pod limited to 2 CPUs on a 64-core node sees 64 cores in its affinity mask; ``--workers auto``
must start 2 workers there, not 64.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerserve.server import cpus
from layerserve.server.launcher import ServerProcess


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _count(tmp_path: Path, files: dict[str, str], proc: str, affinity: int = 64) -> cpus.UsableCores:
    root = _files(tmp_path / "cgroup", files)
    proc_file = _files(tmp_path, {"proc-self-cgroup": proc}) / "proc-self-cgroup"
    return cpus.usable_cores(root, proc_file, affinity=affinity)


V2 = {"cgroup.controllers": "cpuset cpu io memory pids\n"}


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("6400000 100000", 64),
     ("12800000 100000", 64)],  # ceil(quota / period), at least 1, at most the affinity
)
def test_cgroup_v2_cpu_max_limits_a_64_core_affinity(tmp_path: Path, cpu_max: str, expected: int) -> None:
    cores = _count(tmp_path, {**V2, "cpu.max": cpu_max}, "0::/\n")
    assert (cores.count, cores.source, cores.affinity) == (expected, "cgroup v2 cpu.max", 64)


def test_cgroup_v2_max_is_no_limit(tmp_path: Path) -> None:
    cores = _count(tmp_path, {**V2, "cpu.max": "max 100000\n"}, "0::/\n")
    assert (cores.count, cores.source, cores.quota) == (64, "affinity", None)


def test_cgroup_v2_a_parent_limit_binds_its_children(tmp_path: Path) -> None:
    files = {**V2, "cpu.max": "max 100000", "kubepods/pod1/cpu.max": "300000 100000",
             "kubepods/pod1/app/cpu.max": "max 100000"}
    cores = _count(tmp_path, files, "0::/kubepods/pod1/app\n")
    assert (cores.count, cores.source, cores.quota) == (3, "cgroup v2 cpu.max", 3.0)


def test_cgroup_v2_tightest_of_the_chain_wins(tmp_path: Path) -> None:
    files = {**V2, "kubepods/cpu.max": "800000 100000", "kubepods/app/cpu.max": "200000 100000"}
    assert _count(tmp_path, files, "0::/kubepods/app\n").count == 2


def test_a_host_path_missing_under_the_mount_means_the_mount_is_our_cgroup(tmp_path: Path) -> None:
    cores = _count(tmp_path, {**V2, "cpu.max": "200000 100000"}, "0::/kubepods/burstable/pod9/abc\n")
    assert (cores.count, cores.source) == (2, "cgroup v2 cpu.max")


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota(tmp_path: Path, mount: str) -> None:
    files = {f"{mount}/cpu.cfs_quota_us": "200000\n", f"{mount}/cpu.cfs_period_us": "100000\n"}
    cores = _count(tmp_path, files, "5:cpuacct,cpu:/kubepods/pod1/abc\n2:memory:/x\n")
    assert (cores.count, cores.source, cores.quota) == (2, "cgroup v1 cpu.cfs_quota_us", 2.0)


def test_cgroup_v1_nested_path_and_unlimited_minus_one(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
             "cpu/kube/cpu.cfs_quota_us": "-1", "cpu/kube/cpu.cfs_period_us": "100000"}
    cores = _count(tmp_path, files, "3:cpu:/kube\n")
    assert (cores.count, cores.source) == (64, "affinity")
    files["cpu/kube/cpu.cfs_quota_us"] = "250000"
    assert _count(tmp_path, files, "3:cpu:/kube\n").count == 3


def test_hybrid_hierarchy_reads_v1_when_the_root_is_not_cgroup2(tmp_path: Path) -> None:
    # systemd's hybrid layout: /sys/fs/cgroup is a tmpfs, cgroup2 sits at unified/ with no cpu controller
    files = {"unified/cgroup.controllers": "", "cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}
    cores = _count(tmp_path, files, "1:cpu:/\n0::/\n", affinity=2)
    assert (cores.count, cores.source) == (1, "cgroup v1 cpu.cfs_quota_us")


@pytest.mark.parametrize(
    ("files", "proc"),
    [({}, "0::/\n"), ({**V2}, "0::/\n"), ({**V2, "cpu.max": "garbage"}, "0::/\n"),
     ({"cpu/cpu.cfs_quota_us": "x", "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/\n"),
     ({**V2, "cpu.max": "0 100000"}, "")],
)
def test_missing_or_unreadable_files_fall_back_to_the_affinity(tmp_path: Path, files: dict, proc: str) -> None:
    cores = _count(tmp_path, files, proc, affinity=6)
    assert (cores.count, cores.source) == (6, "affinity")


def test_no_proc_file_and_no_mount(tmp_path: Path) -> None:
    cores = cpus.usable_cores(tmp_path / "absent", tmp_path / "absent-proc", affinity=3)
    assert (cores.count, cores.source) == (3, "affinity")


def test_settings_auto_workers_count_what_cpus_counts() -> None:
    from layerserve.server.settings import Settings, usable_cores

    assert usable_cores() == cpus.usable_cores().count == Settings().worker_count


# -- a real cgroup: the server started inside a 1-CPU quota logs it and serves in one process ----------


@pytest.fixture
def one_cpu_cgroup() -> Iterator[Path]:
    """A fresh cgroup limited to one CPU (v1 cpu controller or v2 cpu.max), removed afterwards."""
    name = f"layerserve-test-{uuid.uuid4().hex[:8]}"
    v2 = cpus.CGROUP_ROOT / "cgroup.controllers"
    if v2.exists():
        folder, limit = cpus.CGROUP_ROOT / name, {"cpu.max": "100000 100000"}
    else:
        folder, limit = cpus.CGROUP_ROOT / "cpu" / name, {"cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "100000"}
    try:
        folder.mkdir()
        for file, text in limit.items():
            (folder / file).write_text(text)
    except OSError as error:
        if folder.exists():
            folder.rmdir()
        pytest.skip(f"cannot make a cgroup with a CPU quota here ({error})")
    try:
        yield folder
    finally:
        folder.rmdir()


class _InCgroup(ServerProcess):
    """The server's own command line, run by a shell that first moves itself into ``cgroup``."""

    def __init__(self, cgroup: Path, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.cgroup = cgroup

    def command(self) -> list[str]:
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup), *super().command()]


def test_a_server_in_a_one_cpu_cgroup_counts_one_core_and_logs_it(
    one_cpu_cgroup: Path, tiny_repository: Path, tmp_path: Path
) -> None:
    if cpus.affinity_cores() < 2:
        pytest.skip("needs at least 2 cores in the affinity mask to tell the quota from the affinity")
    server = _InCgroup(one_cpu_cgroup, tiny_repository, ["--metrics-port", "-1"], log_path=tmp_path / "server.log")
    with server:
        pid = server.process.pid
        assert str(pid) in (one_cpu_cgroup / "cgroup.procs").read_text().split()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    serving = [line for line in lines if line["msg"] == "serving"]
    assert len(serving) == 1, lines  # one process: auto counted 1 worker, not the affinity's
    assert serving[0]["usable_cores"] == 1
    assert serving[0]["usable_cores_from"].startswith("cgroup v")
    assert serving[0]["instances"] == "auto (1 to 1)"  # one run at a time: one usable core
    assert not [line for line in lines if line["msg"] == "workers started"]
