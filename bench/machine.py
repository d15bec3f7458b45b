"""What a benchmark ran on: CPU, cores, load, library versions, date and commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("onnxruntime", "grpcio", "protobuf", "numpy", "torch", "onnx", "locust")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict[str, object]:
    """A JSON-ready description of this machine and software, with the 1-minute load average now."""
    return {
        "date": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in PACKAGES},
        "commit": _commit(),
        "load_average_1m": os.getloadavg()[0],
    }


@dataclass(frozen=True)
class CpuTicks:
    """The whole machine's CPU time so far (``/proc/stat``, clock ticks, every core summed)."""

    steal: int
    total: int


def cpu_ticks() -> CpuTicks:
    """Steal and total ticks now; zeros where ``/proc/stat`` cannot be read (not Linux).

    Steal is time a virtual machine's cores were ready to run but the hypervisor ran someone else:
    on this project's shared 2-core VM it explains the slow repeats (docs/BENCHMARKS.md, "Issue 12: slow
    repeats are stolen time; runs on the loop when every core is taken").
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return CpuTicks(0, 0)
    # cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is inside user.
    ticks = [int(value) for value in fields[1:9]]
    return CpuTicks(steal=ticks[7] if len(ticks) > 7 else 0, total=sum(ticks))


def stolen_share(before: CpuTicks, after: CpuTicks) -> float:
    """The share of the machine's CPU time the hypervisor took between two readings (0-1); NaN if none passed."""
    total = after.total - before.total
    return (after.steal - before.steal) / total if total > 0 else float("nan")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu_s(pid: int) -> float:
    """User+system CPU seconds ``pid`` and its live child processes (``--workers``) have used so far.

    Linux /proc; NaN if ``pid`` is unreadable.
    """
    fields = _stat(pid)
    if fields is None:
        return float("nan")
    ticks = int(fields[11]) + int(fields[12])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            child = _stat(int(entry.name))
            if child is not None and int(child[1]) == pid:
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/{'status' if key == 'VmRSS' else 'smaps_rollup'}").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    return _status_kib(pid, "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB: pages shared with other processes count by their share,
    so summing it over a server's processes counts a shared weight file once."""
    return _status_kib(pid, "Pss")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every process below it (a server's workers)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [pid, *(grandchild for child in children for grandchild in tree_pids(child))]


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and its child processes, summed, in KiB (shared pages counted in each)."""
    return sum(rss_kib(p) for p in tree_pids(pid))


def tree_pss_kib(pid: int) -> int:
    """PSS of ``pid`` and its child processes, summed, in KiB (shared pages counted once)."""
    return sum(pss_kib(p) for p in tree_pids(pid))
