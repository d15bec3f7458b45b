"""Triton-style statistics per served name and version, summed over every worker process.

``ModelStatistics`` is what perf_analyzer and Triton's clients read as the server's own account of
its requests: counts, and the time spent queued and computing. With ``--workers N`` each worker serves
the connections the kernel gives it, so counters kept per process described only the worker that
happened to answer. Here each worker writes its counters, and only its own, as int64 values in one
file of a folder the parent makes (server/processes.py); whichever worker answers sums every file.
Serving alone, the counters live in this process's memory and nothing is written to disk.

Everything is sized when the repository is loaded: one record per served name and version, and at
most ``BATCH_SLOTS`` distinct batch sizes per record (Triton's ``batch_stats``); a run of another size
counts in the totals, not in ``batch_stats``. So no request can add state. A reader takes no lock:
each value is one aligned 8-byte store, so a sum read while a run is recorded may count that run's
count and not yet its time, never a torn value.
"""

from __future__ import annotations

import json
import mmap
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The distinct batch sizes each record keeps: dynamic batching with max_batch_size 64 (our manifests'
# default) can run every size from 1 to 64.
BATCH_SLOTS = 64

_MAGIC = b"LSSTATS1"
_LAST_MS, _INFERENCES, _EXECUTIONS = 0, 1, 2
_SUCCESS, _FAIL, _QUEUE, _COMPUTE = 3, 5, 7, 9  # each a (count, ns) pair
_SLOTS_USED = 11
_FIRST_SLOT = 12  # then (batch size, count, ns) per slot
_RECORD = _FIRST_SLOT + 3 * BATCH_SLOTS
_FILE_GLOB = "stats-*.bin"

Key = tuple[str, str]  # (served name, version)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0


@dataclass
class Stats:
    """Triton's ModelStatistics for one served name and version: a snapshot, summed over the workers."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    # batch size -> compute durations of runs of that size
    batches: dict[int, Duration] = field(default_factory=dict)


class StatsEntry:
    """Where one worker records one served name and version (the only writer of its record)."""

    def __init__(self, values: memoryview, record: int) -> None:
        self._values = values
        self._base = record * _RECORD
        self._slots: dict[int, int] = {}  # batch size -> value index of its slot, at most BATCH_SLOTS

    def record_run(self, rows: int, requests: int, compute_s: float, queue_s: Sequence[float]) -> None:
        """One (merged) run of ``rows`` rows for ``requests`` requests, and how long each waited."""
        values, base, compute_ns = self._values, self._base, int(compute_s * 1e9)
        values[base + _EXECUTIONS] += 1
        values[base + _INFERENCES] += rows
        values[base + _COMPUTE] += requests
        values[base + _COMPUTE + 1] += compute_ns
        values[base + _QUEUE] += len(queue_s)
        values[base + _QUEUE + 1] += int(sum(queue_s) * 1e9)
        slot = self._slots.get(rows)
        if slot is None:
            slot = self._claim(rows)
        if slot is not None:
            values[slot + 1] += 1
            values[slot + 2] += compute_ns

    def _claim(self, rows: int) -> int | None:
        used = len(self._slots)
        if used >= BATCH_SLOTS:
            return None
        slot = self._base + _FIRST_SLOT + 3 * used
        self._values[slot] = rows  # the size first: a reader counts only slots below the used count
        self._values[self._base + _SLOTS_USED] = used + 1
        self._slots[rows] = slot
        return slot

    def succeeded(self, seconds: float, now_ms: int) -> None:
        """A request answered after ``seconds``, at wall-clock ``now_ms``."""
        values, base = self._values, self._base
        values[base + _SUCCESS] += 1
        values[base + _SUCCESS + 1] += int(seconds * 1e9)
        values[base + _LAST_MS] = now_ms

    def failed(self, seconds: float) -> None:
        """A request that ended in an error (or was cancelled) after ``seconds``."""
        values, base = self._values, self._base
        values[base + _FAIL] += 1
        values[base + _FAIL + 1] += int(seconds * 1e9)


class _Mapped:
    """One worker's statistics file, mapped read-only: its keys and its records as an int64 array."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self.keys, self.records = _parse(self._map)


def _parse(buffer: mmap.mmap) -> tuple[dict[Key, int], np.ndarray]:
    if buffer[:8] != _MAGIC:
        raise ValueError("not a layerserve statistics file")
    length = int.from_bytes(buffer[8:16], "little")
    keys = json.loads(buffer[16:16 + length])
    offset = _aligned(16 + length)
    records = np.frombuffer(buffer, np.int64, count=len(keys) * _RECORD, offset=offset).reshape(len(keys), _RECORD)
    return {(name, version): index for index, (name, version) in enumerate(keys)}, records


def _aligned(size: int) -> int:
    return (size + 7) // 8 * 8


class StatsTable:
    """This worker's statistics for every served name and version, and the sum over every worker.

    ``folder``: shared by the server's workers (one file each); None when this process serves alone.
    """

    def __init__(self, keys: Iterable[Key], folder: Path | None = None) -> None:
        self.keys = list(dict.fromkeys(keys))
        self._index = {key: index for index, key in enumerate(self.keys)}
        header = json.dumps(self.keys).encode()
        offset = _aligned(16 + len(header))
        size = offset + max(1, len(self.keys)) * _RECORD * 8
        self.folder = Path(folder) if folder is not None else None
        self.path: Path | None = None  # this worker's file, once it is in the folder
        partial = None
        if self.folder is None:
            self._map = mmap.mmap(-1, size)
        else:
            descriptor, partial = tempfile.mkstemp(prefix=".partial-", dir=self.folder)
            with os.fdopen(descriptor, "r+b") as file:
                file.truncate(size)
                self._map = mmap.mmap(file.fileno(), size)
        self._map[:8] = _MAGIC
        self._map[8:16] = len(header).to_bytes(8, "little")
        self._map[16:16 + len(header)] = header
        if partial is not None:  # whole, header included, before a reader can find it by its name
            self.path = Path(partial).with_name(f"stats-{os.getpid()}-{Path(partial).name.removeprefix('.partial-')}.bin")
            os.rename(partial, self.path)
        self._values = memoryview(self._map)[offset:].cast("q")  # this worker's records: writes go here
        self._entries: dict[Key, StatsEntry] = {}
        self._others: dict[str, _Mapped] = {}

    def entry(self, name: str, version: str) -> StatsEntry:
        """Where this worker records ``name`` at ``version`` (KeyError for a name the repository does not serve)."""
        found = self._entries.get((name, version))
        if found is None:
            found = self._entries[(name, version)] = StatsEntry(self._values, self._index[(name, version)])
        return found

    def read(self) -> dict[Key, Stats]:
        """Every served name and version's statistics, summed over the workers (last inference: the latest)."""
        totals = {key: Stats() for key in self.keys}
        for keys, records in self._tables():
            for key, index in keys.items():
                if key in totals:
                    _add(totals[key], records[index])
        return totals

    def _tables(self) -> list[tuple[dict[Key, int], np.ndarray]]:
        own = (self._index, np.frombuffer(self._values, np.int64).reshape(-1, _RECORD))
        if self.folder is None:
            return [own]
        tables = [own]
        for path in sorted(self.folder.glob(_FILE_GLOB)):
            if path == self.path:
                continue
            mapped = self._others.get(path.name)
            if mapped is None:
                try:
                    mapped = _Mapped(path)
                except (OSError, ValueError):  # gone, or not a statistics file: skipped
                    continue
                self._others[path.name] = mapped
            tables.append((mapped.keys, mapped.records))
        return tables


def _add(total: Stats, record: np.ndarray) -> None:
    values = [int(v) for v in record[:_FIRST_SLOT]]
    total.last_inference_ms = max(total.last_inference_ms, values[_LAST_MS])
    total.inference_count += values[_INFERENCES]
    total.execution_count += values[_EXECUTIONS]
    for duration, at in ((total.success, _SUCCESS), (total.fail, _FAIL), (total.queue, _QUEUE),
                         (total.compute_infer, _COMPUTE)):
        duration.count += values[at]
        duration.ns += values[at + 1]
    used = min(values[_SLOTS_USED], BATCH_SLOTS)
    for size, count, ns in record[_FIRST_SLOT:_FIRST_SLOT + 3 * used].reshape(used, 3).tolist():
        batch = total.batches.setdefault(size, Duration())
        batch.count += count
        batch.ns += ns
