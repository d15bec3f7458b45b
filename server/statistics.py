"""Triton-style statistics per served name and version, kept by the DataPlane (this process only)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class Stats:
    """Triton's ModelStatistics for one endpoint and version (this process only)."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    # batch size -> compute durations of runs of that size
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))

    def record_run(self, rows: int, requests: int, compute_s: float, queue_s: Sequence[float]) -> None:
        self.execution_count += 1
        self.inference_count += rows
        self.batches[rows].add(compute_s)
        self.compute_infer.add(compute_s, requests)
        for seconds in queue_s:
            self.queue.add(seconds)
