"""Dynamic batching with Triton's semantics, as a queue of futures (MLServer's adaptive batcher).

Each request enters a bounded queue with a future. One task per endpoint waits
for a free instance, takes the oldest request, merges the requests already
waiting up to ``max_batch_size`` rows, runs the merged batch once on a worker
thread and splits the output rows back: each future gets exactly its own rows.
A request that would overflow the batch starts the next one; requests are
never split or reordered.

The batcher never makes an idle server wait. ``max_queue_delay`` (waiting for
more requests, counted from the oldest one's arrival) applies only to a batch
forming *under load*: when the oldest request had to wait for an instance, or
others were already queued behind it. A lone request on an idle server runs at
once, whatever the delay; a request that fills the batch by itself runs as it
is, with no concatenation and no split. So the delay trades latency for larger
batches only when there is load to batch.

A request that finds the endpoint idle and is alone in the server (``alone``, the server's
judgement) runs right here on the event loop when the slots allow it (RunSlots.take_for_loop:
short runs only), with no queue and no thread: nothing could merge with it. A merged batch also runs
on the loop when the slots say the other workers hold every core (RunSlots.run_here).

A request whose client cancelled (its future is cancelled when gRPC cancels the
handler) or whose deadline passed while it waited is dropped from the batch
before the run, so abandoned work costs no compute; ``on_drop`` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from .errors import QueueFull, RequestExpired
from .slots import RunSlots

RunFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


async def call_on(executor: Executor | None, fn: Callable, *args: object):
    """``fn(*args)`` on ``executor``'s threads, or right here on the event loop when it is None.

    On the loop saves the thread hop (tens of microseconds), which matters for
    small models; it blocks the loop for the run, so it suits runs of well under
    a millisecond (docs/BENCHMARKS.md, "Server concurrency design").
    """
    if executor is None:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def call_timed(executor: Executor | None, fn: Callable, *args: object) -> tuple[object, float]:
    """``call_on(executor, fn, *args)`` and the seconds ``fn`` itself ran, timed where it runs.

    Timed around the await instead, a run would also count the hand-off to a thread and the time a busy
    event loop takes to notice the result. On a GPU that round trip was many times the run itself
    (docs/BENCHMARKS.md, "On a GPU"), and the run slots, taking the runs for long ones, let many go at once
    instead of merging them.
    """

    def timed() -> tuple[object, float]:
        started = time.perf_counter()
        result = fn(*args)
        return result, time.perf_counter() - started

    return await call_on(executor, timed)


@dataclass(frozen=True)
class BatchReport:
    """What one merged run did, for statistics and metrics."""

    rows: int
    requests: int
    compute_s: float
    queue_s: list[float]  # per request: enqueue -> run start
    # Whether the batch was forming under load, so max_queue_delay could hold it for more requests.
    delayable: bool = False


@dataclass
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    future: asyncio.Future
    # time.monotonic() after which nobody waits for the answer; None: no deadline.
    deadline: float | None = None
    enqueued: float = field(default_factory=time.perf_counter)

    def abandoned(self) -> str | None:
        """Why this request must not run ("cancelled", "deadline"), or None; an expired one is failed here."""
        if self.future.done():
            return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.future.set_exception(RequestExpired("deadline exceeded while queued; the request was not run"))
            return "deadline"
        return None


class Batcher:
    """Merge concurrent requests for one endpoint into single runs.

    ``infer`` raises QueueFull when ``max_queue_size`` requests already wait, and
    whatever ``run`` raises for the batch the request was part of.
    """

    def __init__(
        self,
        run: RunFn,
        executor: Executor | None,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        instances: int | RunSlots = 1,
        on_batch: Callable[[BatchReport], None] | None = None,
        label: str = "",
        on_drop: Callable[[str], None] | None = None,
        alone: Callable[[], bool] | None = None,
        spread: Callable[[RunFn], RunFn] | None = None,
    ) -> None:
        self._run = run
        self._alone = alone
        # Gives a lone request's run every core where the server says so (DataPlane._spread); None: never.
        self._spread = spread
        self._executor = executor
        # 0 means "no limit" in the manifest; a merged run still needs a bound.
        self.max_batch_size = max_batch_size or 1 << 31
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self.label = label
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        # Runs this endpoint may have at once (server/slots.py): a count, or shared slots that follow the runs.
        self._slots = instances if isinstance(instances, RunSlots) else RunSlots(instances)
        self._carry: _Pending | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        """Start the batching task on the running event loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher {self.label}")

    async def stop(self) -> None:
        """Finish the runs in flight, then stop the batching task."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def infer(
        self, inputs: Mapping[str, np.ndarray], rows: int, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one validated request of ``rows`` rows; resolves to its own output rows.

        ``deadline`` (``time.monotonic()``): past it, a still-queued request is dropped with RequestExpired.
        """
        if self._queue.qsize() >= self.max_queue_size:
            raise QueueFull(f"{self.label} queue holds {self.max_queue_size} requests (max_queue_size); retry later")
        if (self._alone is not None and self._queue.empty() and self._carry is None and self._alone()
                and self._slots.take_for_loop()):
            return await self._run_on_loop(inputs, rows)
        self.start()
        pending = _Pending(inputs, rows, asyncio.get_running_loop().create_future(), deadline)
        self._queue.put_nowait(pending)
        return await pending.future

    async def _run_on_loop(self, inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Run a lone request at once on the event loop, in the slot ``take_for_loop`` took."""
        compute_s: float | None = None
        try:
            outputs, compute_s = await call_timed(None, self._run, inputs)
            if self._on_batch is not None:
                self._on_batch(BatchReport(rows, 1, compute_s, [0.0]))
            return outputs
        finally:
            await self._slots.release(compute_s)

    def _live(self, pending: _Pending) -> bool:
        reason = pending.abandoned()
        if reason is not None and self._on_drop is not None:
            self._on_drop(reason)
        return reason is None

    async def _next(self) -> _Pending:
        while True:
            if self._carry is not None:
                pending, self._carry = self._carry, None
            else:
                pending = await self._queue.get()
            if self._live(pending):
                return pending

    async def _loop(self) -> None:
        # The batch lives only in its run's task: kept in this frame between requests, an idle server would
        # hold the last batch's inputs (a ResNet-50 batch of 64: 37 MiB per worker) until the next request.
        while True:
            self._start_run(*await self._gather())

    async def _gather(self) -> tuple[list[_Pending], int, bool]:
        """The next batch: its requests, rows, and whether it formed under load (delayable)."""
        first = await self._next()
        contended = self._slots.locked()  # every instance busy: the request waits, under load
        await self._slots.acquire()
        try:
            return await self._fill(first, contended)
        except asyncio.CancelledError:  # stopped while the batch formed: its slot goes back (the board counts it)
            await self._slots.release()
            raise

    async def _fill(self, first: _Pending, contended: bool) -> tuple[list[_Pending], int, bool]:
        """``first`` and what may join it, within the queue delay when the batch forms under load."""
        batch, rows = [first], first.rows
        delayable = contended or not self._queue.empty()
        deadline = first.enqueued + self.max_queue_delay_s if delayable else None
        while rows < self.max_batch_size:
            if self._queue.empty():
                remaining = -1.0 if deadline is None else deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                pending = self._queue.get_nowait()
            if not self._live(pending):
                continue
            if rows + pending.rows > self.max_batch_size:
                self._carry = pending
                break
            batch.append(pending)
            rows += pending.rows
        return batch, rows, delayable

    def _start_run(self, batch: list[_Pending], rows: int, delayable: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._execute(batch, rows, delayable))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending], rows: int, delayable: bool) -> None:
        compute_s: float | None = None  # fed to the slots: how long runs take decides how many may go at once
        try:
            # Clients may have gone while the batch gathered (the delay) or waited for an instance.
            batch = [pending for pending in batch if self._live(pending)]
            if not batch:
                return
            rows = sum(pending.rows for pending in batch)
            started = time.perf_counter()
            try:
                if len(batch) == 1:
                    merged = batch[0].inputs
                else:
                    merged = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
                executor = None if self._slots.run_here() else self._executor
                run = self._run if executor is None or self._spread is None else self._spread(self._run)
                outputs, compute_s = await call_timed(executor, run, merged)
            except Exception as error:  # noqa: BLE001 - every request of the batch gets the error
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                return
            offset = 0
            for pending in batch:
                if not pending.future.done():
                    own = {name: array[offset : offset + pending.rows] for name, array in outputs.items()}
                    pending.future.set_result(own if len(batch) > 1 else outputs)
                offset += pending.rows
            if self._on_batch is not None:
                queued = [started - p.enqueued for p in batch]
                self._on_batch(BatchReport(rows, len(batch), compute_s, queued, delayable))
        finally:
            await self._slots.release(compute_s)
