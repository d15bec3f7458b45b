"""How many runs of one endpoint may go at once: Triton's instance count, fixed or following the runs.

Short runs (a digits CNN: a tenth of a millisecond) gain nothing from running side by side in one
process: the event loop and gRPC are the bottleneck, and a second thread only adds hand-offs. Long
runs (a ResNet-50: tens of milliseconds on one core) do: one client process whose requests all
reach one worker (gRPC multiplexes them on one connection) otherwise gets one core of the machine.
So by default an endpoint runs one batch at a time while its mean run is short, and up to
``most`` (the usable cores) at once while it is long (LONG_RUN_S, measured on the runs
themselves) and a core is free: with workers, one at a time while the others hold every core
(``board``). ``--instances N`` fixes the count instead.

A request alone in the server, whose endpoint's runs are very short (LOOP_RUN_S), may also run on
the event loop itself (``take_for_loop``): the batching task's hops and a hand-off to a thread and
back cost the digits model ~0.2 ms of a 1 ms round trip, and alone, a request has nothing to merge
with (docs/server.md, "Runs on the event loop when alone"). The server decides when a request is
alone; the slots only count the run.
"""

from __future__ import annotations

import asyncio

from .busy_workers import WorkerBoard

# A run this long (mean over recent runs) is worth a second thread; well above a hand-off's cost.
LONG_RUN_S = 0.002
# A run this short (mean over recent runs) may go on the event loop when its request is alone: it blocks
# the loop for at most about this long, and a thread hand-off would cost a large share of it.
LOOP_RUN_S = 0.001
# The longest mean run that may go on the event loop while the other workers hold every core: the loop
# (health checks, other requests of this worker) then waits about this long at most.
LOOP_STALL_S = 0.02
# A run this long (mean over recent runs) takes every core when it is alone in the server
# (DataPlane._spread). In process on these 2 cores, two intra-op threads against one ran ResNet-18 and
# ResNet-50 at batch 1 (49 and 109 ms) 1.44 and 1.41x faster, the 1.3-20 ms graphs of the foreign
# repository 0.81-1.25x, shorter ones as low as 0.4x (docs/BENCHMARKS.md, "Issue 12: what the
# transport alone allows, statistics over workers, a long run alone on every core").
EVERY_CORE_RUN_S = 0.025
# Weight of the newest run in the running mean.
_SMOOTHING = 0.2


class RunSlots:
    """An asyncio semaphore whose size is ``fixed``, or 1 / ``most`` as the endpoint's runs are short / long
    (1 for long ones too while ``board`` says the other workers hold every core)."""

    def __init__(self, fixed: int | None = None, most: int = 1, long_run_s: float = LONG_RUN_S,
                 loop_run_s: float = LOOP_RUN_S, board: WorkerBoard | None = None) -> None:
        self._fixed = None if fixed is None else max(1, fixed)
        self._board = board
        self._most = max(1, most)
        self._long_run_s = long_run_s
        self._loop_run_s = loop_run_s
        self._mean_s = 0.0
        self._in_use = 0
        self._changed: asyncio.Condition | None = None

    @property
    def allowed(self) -> int:
        """Runs allowed at once now."""
        if self._fixed is not None:
            return self._fixed
        if self._mean_s < self._long_run_s or (self._board is not None and self._board.cores_taken()):
            return 1  # short runs gain nothing from a second thread; with every core taken, neither do long ones
        return self._most

    @property
    def worth_every_core(self) -> bool:
        """Whether the count follows the runs (auto) and they are long enough (EVERY_CORE_RUN_S) that a lone
        one gains from every core."""
        return self._fixed is None and self._mean_s >= EVERY_CORE_RUN_S

    def locked(self) -> bool:
        """Whether a run would have to wait for a slot now."""
        return self._in_use >= self.allowed

    def take_for_loop(self) -> bool:
        """Take a slot for a run on the event loop (the caller runs at once, then releases), if the
        count follows the runs (auto), none is in flight and the runs measured so far are short.
        Unmeasured runs are not taken: a first ResNet-50 batch must not block the loop."""
        if self._fixed is not None or self._in_use or not 0.0 < self._mean_s < self._loop_run_s:
            return False
        self._in_use += 1
        if self._board is not None:
            self._board.started()
        return True

    def run_here(self) -> bool:
        """Whether a run that holds a slot (``acquire``) should go on the event loop rather than a thread:
        the count follows the runs (auto), they are measured and shorter than LOOP_STALL_S, and the other
        workers hold every core (the board), so a thread would only contend for them."""
        return (self._fixed is None and self._board is not None and 0.0 < self._mean_s < LOOP_STALL_S
                and self._board.cores_taken())

    async def acquire(self) -> None:
        """Wait for a slot (on the running event loop)."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_use < self.allowed)
            self._in_use += 1
        if self._board is not None:
            self._board.started()

    async def release(self, run_s: float | None = None) -> None:
        """Give a slot back; ``run_s`` (how long the run took) feeds the mean that decides the count."""
        if run_s is not None:
            self._mean_s = run_s if self._mean_s == 0.0 else (1 - _SMOOTHING) * self._mean_s + _SMOOTHING * run_s
        self._in_use -= 1
        if self._board is not None:
            self._board.ended()
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()
