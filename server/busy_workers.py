"""Which worker processes are running a model now, or were a moment ago: shared by every worker process.

A worker hands its runs to threads so that one connection can use every core (server/slots.py). That
only pays while a core is free. When every other worker is running too (``--workers auto`` starts one
per core, and the load reached them all), a thread contends for the same cores: the runs are
time-sliced against each other and against the loops reading the next requests, and the hand-off costs
besides. On the 2-core machine the digits model's batch-64 cell went from 11.8-12.4k to 13.8k images
per second (medians of five fresh-start repeats) with its runs on the event loop in that case
(docs/BENCHMARKS.md, "Issue 12: slow repeats are stolen time; runs on the loop when every core is
taken"). So a worker asks the board, before a run, whether the other workers hold the cores.

A worker counts as busy while it runs and for BUSY_AFTER_S after its last run ended: under load a
worker's runs are separated by the few milliseconds it takes to answer one request and read the next,
and those gaps must not read as a free core. A worker that stops getting requests is free again soon.

The parent makes the board before it spawns the workers (server/processes.py) and gives each its
index; a worker writes only its own entries, from its event loop, and reads the others' without a lock:
a value read a moment late only makes one run take the thread, or the loop, as the moment before.
"""

from __future__ import annotations

import copy
import ctypes
import time
from multiprocessing.context import SpawnContext

# How long after its last run a worker still counts as busy: well above the gap between two runs of a
# loaded worker (milliseconds), well below what a person would notice as a core left idle.
BUSY_AFTER_S = 0.05


class WorkerBoard:
    """Runs in flight, and when the last one ended, per worker process; shared across the processes it
    was spawned into (clock: ``time.monotonic``, the same for every process on the machine)."""

    def __init__(self, workers: int, cores: int, context: SpawnContext, index: int = 0) -> None:
        self._counts = context.RawArray(ctypes.c_int32, max(1, workers))
        self._ended = context.RawArray(ctypes.c_double, max(1, workers))
        self._cores = max(1, cores)
        self._index = index

    def for_worker(self, index: int) -> WorkerBoard:
        """The same board, as worker ``index`` sees it (pass it to that worker at spawn)."""
        view = copy.copy(self)  # the same shared arrays
        view._index = index
        return view

    def started(self) -> None:
        """This worker began a run."""
        self._counts[self._index] += 1

    def ended(self) -> None:
        """This worker's run ended."""
        self._counts[self._index] -= 1
        self._ended[self._index] = time.monotonic()

    def _others_busy(self) -> int:
        """Other workers running now or a moment ago (BUSY_AFTER_S)."""
        recent = time.monotonic() - BUSY_AFTER_S
        return sum(1 for index, count in enumerate(self._counts)
                   if index != self._index and (count > 0 or self._ended[index] > recent))

    def others_idle(self) -> bool:
        """Whether no other worker is running, or was a moment ago: a run here may take every core."""
        return self._others_busy() == 0

    def cores_taken(self) -> bool:
        """Whether the other workers, running now or a moment ago, hold every core but this worker's."""
        return self._cores >= 2 and self._others_busy() >= self._cores - 1
