"""How many cores this process may really use: its affinity mask, capped by its cgroup CPU quota.

A Kubernetes pod with ``limits: {cpu: 2}`` on a 64-core node sees all 64 cores in its
affinity mask; only the CFS quota of its cgroup says 2. Starting 64 workers there would
make them fight over 2 cores' worth of time (and load 64 copies of every model), so
``--workers auto`` counts ``ceil(quota / period)``, at least 1 and at most the affinity.

Where the quota is read, for the cgroup this process is in (``/proc/self/cgroup``),
walking up to the hierarchy's root, because a parent's limit binds its children too:

- cgroup v2: ``cpu.max`` holds ``"<quota> <period>"`` or ``"max <period>"`` (no limit);
- cgroup v1: ``cpu.cfs_quota_us`` (-1: no limit) and ``cpu.cfs_period_us`` under the
  ``cpu`` controller's mount (``cpu`` or ``cpu,cpuacct``).

Inside a container the cgroup path in ``/proc/self/cgroup`` may name the host's
hierarchy while the mount shows only the container's own cgroup; when that path does not
exist under the mount, the mount's root is taken as this process's cgroup. Unreadable or
missing files mean no quota. The root is a parameter so tests can use fake files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class UsableCores:
    """``count`` cores, and where the number came from (for the start-up log line)."""

    count: int
    source: str  # "affinity", "cgroup v2 cpu.max" or "cgroup v1 cpu.cfs_quota_us"
    affinity: int
    quota: float | None = None  # the cgroup's limit in CPUs (quota / period), None when unlimited


def affinity_cores() -> int:
    """Cores in this process's affinity mask (a container's cpuset), or the machine's count off Linux."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def usable_cores(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP, affinity: int | None = None
) -> UsableCores:
    """The affinity count capped by the tightest CPU quota on this process's cgroup and its ancestors."""
    affinity = affinity_cores() if affinity is None else affinity
    paths = _cgroup_paths(proc_cgroup)
    for source, limit in (("cgroup v2 cpu.max", _v2_limit(cgroup_root, paths.get(""))),
                          ("cgroup v1 cpu.cfs_quota_us", _v1_limit(cgroup_root, paths.get("cpu")))):
        if limit is not None:
            return UsableCores(max(1, min(affinity, math.ceil(limit))), source, affinity, limit)
    return UsableCores(max(1, affinity), "affinity", affinity)


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """Controller -> cgroup path from ``/proc/self/cgroup`` lines ``id:controllers:path`` (v2: key "")."""
    paths: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path or "/"
    return paths


def _chain(mount: Path, path: str | None) -> list[Path]:
    """This cgroup's folder under ``mount`` and each ancestor up to ``mount`` itself, innermost first."""
    own = mount / (path or "/").strip("/")
    if not own.is_dir():  # the path names the host's hierarchy; the mount is our own cgroup
        own = mount
    chain = [own]
    while chain[-1] != mount and mount in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _tightest(limits: list[float | None]) -> float | None:
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _v2_limit(root: Path, path: str | None) -> float | None:
    if not (root / "cgroup.controllers").exists():  # not a cgroup v2 mount (v1 or hybrid)
        return None
    return _tightest([_v2_quota(_read(folder / "cpu.max")) for folder in _chain(root, path)])


def _v2_quota(text: str | None) -> float | None:
    fields = (text or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(root: Path, path: str | None) -> float | None:
    mount = next((root / name for name in V1_CPU_MOUNTS if (root / name / "cpu.cfs_period_us").exists()), None)
    if mount is None:
        return None
    return _tightest([_v1_quota(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))
                      for folder in _chain(mount, path)])


def _v1_quota(quota_text: str | None, period_text: str | None) -> float | None:
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def log_fields() -> dict[str, object]:
    """The start-up log's record of the cores counted and where the count came from."""
    cores = usable_cores()
    return {"usable_cores": cores.count, "usable_cores_from": cores.source}
