"""The transport-free core: inference, chains and statistics over a loaded Repository.

Servicers hand it decoded numpy arrays and get numpy arrays back; it validates
(endpoints.py), batches (batching.py) or runs directly on the worker threads,
and keeps Triton-style statistics per endpoint. It knows nothing of gRPC.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from layerserve.proto import names

from . import runtime
from .batching import Batcher, BatchReport, call_on
from .drain import Gate
from .endpoints import Endpoint, answer_row_bytes, check_answer_size, validate_inputs
from .errors import InvalidInput, RequestExpired
from .repository import ModelVersion, Repository


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


@dataclass(frozen=True)
class InferResult:
    """What an inference produced: the endpoint that ran and the outputs asked for, by name."""

    endpoint: Endpoint
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class KeptOutputs:
    """One kept block's outputs, by tensor name."""

    block_index: int
    block_name: str
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class ChainResult:
    """The last block's outputs by tensor name, the kept blocks' outputs in block order, and what ran."""

    outputs: dict[str, np.ndarray]
    kept: list[KeptOutputs]
    blocks_run: list[str]
    model: ModelVersion


class DataPlane:
    """Inference over ``repository``; async methods run on one event loop.

    ``instances`` worker threads run sessions (0: run them on the event loop
    itself); an endpoint with dynamic batching gets a Batcher allowed
    ``instances`` concurrent runs (one when 0). ``max_message_bytes`` is the
    transport's limit: a request whose answer would exceed it is refused before
    it runs (0: no check).
    """

    def __init__(self, repository: Repository, instances: int = 1, max_queue_size: int = 1024,
                 max_message_bytes: int = 64 << 20) -> None:
        self.repository = repository
        self.instances = instances
        self.max_queue_size = max_queue_size
        # The gRPC message limit, both ways, this server runs with (``--max-message-bytes``, or derived
        # from the models by server/limits.py); one value, fixed once the repository is loaded.
        self.max_message_bytes = max_message_bytes
        self.executor = ThreadPoolExecutor(instances, thread_name_prefix="ort") if instances > 0 else None
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self.stats: dict[tuple[str, str], Stats] = defaultdict(Stats)
        # Set on SIGTERM: readiness turns false while in-flight requests finish.
        self.draining = False
        # Every RPC passes it (errors.handled); closed on SIGTERM so new ones get UNAVAILABLE.
        self.gate = Gate()
        # Observers of every merged or direct run (metrics plug in here).
        self.batch_observers: list = []
        # Observers of requests dropped unrun: (endpoint, reason "cancelled" or "deadline").
        self.drop_observers: list = []

    def _batcher(self, endpoint: Endpoint) -> Batcher:
        key = (endpoint.name, endpoint.version)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = Batcher(
                endpoint.run,
                self.executor,
                endpoint.batching.max_batch_size,
                endpoint.batching.max_queue_delay_us,
                self.max_queue_size,
                self.instances,
                on_batch=lambda report: self._record(endpoint, report),
                label=endpoint.name,
                on_drop=lambda reason: self._dropped(endpoint, reason),
            )
            self._batchers[key] = batcher
        return batcher

    def _record(self, endpoint: Endpoint, report: BatchReport) -> None:
        self.stats[(endpoint.name, endpoint.version)].record_run(
            report.rows, report.requests, report.compute_s, report.queue_s
        )
        for observer in self.batch_observers:
            observer(endpoint, report)

    def _dropped(self, endpoint: Endpoint, reason: str) -> None:
        for observer in self.drop_observers:
            observer(endpoint, reason)

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        deadline: float | None = None,
    ) -> InferResult:
        """Run ``model`` (any served name) on ``inputs``; returns the requested outputs (all when empty).

        ``deadline`` is a ``time.monotonic()`` instant: a request still queued past it is dropped
        unrun (RequestExpired), as is one whose caller cancelled (its task is cancelled).
        Raises ModelNotFound, ModelUnavailable, InvalidInput, AnswerTooLarge, QueueFull, RequestExpired.
        """
        endpoint = self.repository.endpoint(model, version)
        with self._accounted(endpoint):
            names = endpoint.check_outputs(outputs)
            rows = endpoint.validate(inputs)
            check_answer_size(endpoint.name, rows, endpoint.answer_row_bytes(names), self.max_message_bytes,
                              endpoint.batched)
            if endpoint.batching.enabled and endpoint.batched:
                results = await self._batcher(endpoint).infer(inputs, rows, deadline)
            else:
                if deadline is not None and time.monotonic() >= deadline:
                    self._dropped(endpoint, "deadline")
                    raise RequestExpired("deadline exceeded before the run; the request was not run")
                # A cancelled caller cancels the executor job too while it still waits for a thread.
                begun = time.perf_counter()
                results = await call_on(self.executor, endpoint.run, inputs)
                self._record(endpoint, BatchReport(rows, 1, time.perf_counter() - begun, [0.0]))
        return InferResult(endpoint, {name: results[name] for name in names})

    @contextmanager
    def _accounted(self, endpoint: Endpoint) -> Iterator[None]:
        """Count the request as a success or a failure of ``endpoint`` (Triton's success/fail durations)."""
        stats = self.stats[(endpoint.name, endpoint.version)]
        start = time.perf_counter()
        try:
            yield
        except BaseException:  # cancellation included: the request failed for its caller
            stats.fail.add(time.perf_counter() - start)
            raise
        stats.success.add(time.perf_counter() - start)
        stats.last_inference_ms = int(time.time() * 1000)

    async def chain(
        self,
        model: str,
        version: str,
        start: int,
        stop: int | None,
        keep: Sequence[int],
        inputs: Mapping[str, np.ndarray],
    ) -> ChainResult:
        """Run blocks [start, stop) of ``model`` on one request, returning kept activations too.

        Raises ModelNotFound, ModelUnavailable, InvalidInput (bad range, bad keep, bad inputs),
        AnswerTooLarge (the last and kept outputs would exceed the message limit).
        """
        version_ = self.repository.model(model, version)
        if model != version_.name:
            raise InvalidInput(f"Chain takes a model name such as {version_.name!r}, got {model!r}")
        blocks = list(version_.manifest.blocks)
        count = len(blocks)
        stop = count if stop is None else stop
        if not 0 <= start < stop <= count:
            raise InvalidInput(f"{model} chain expects 0 <= start < stop <= {count}, got start={start} stop={stop}")
        for index in keep:
            if not start <= index < stop:
                raise InvalidInput(f"{model} chain keeps block {index}, which is outside [{start}, {stop})")
        first = version_.endpoints[names.block_name(model, blocks[start].name)]
        # Chain RPCs count in the statistics and metrics of the model's chain endpoint.
        chain_endpoint = version_.endpoints[names.chain_name(model)]
        with self._accounted(chain_endpoint):
            label = f"{model} chain [{start}, {stop}) block {blocks[start].name}"
            rows = validate_inputs(label, first.inputs, inputs, first.batching.max_batch_size, first.batched)
            answered = {stop - 1, *keep}
            row_bytes = [
                answer_row_bytes(version_.endpoints[names.block_name(model, blocks[index].name)].outputs, first.batched)
                for index in sorted(answered)
            ]
            total = None if any(b is None for b in row_bytes) else sum(row_bytes)
            check_answer_size(f"{model} chain [{start}, {stop})", rows, total, self.max_message_bytes, first.batched)
            graphs = version_.blocks[start:stop]
            relative = [index - start for index in keep]
            begun = time.perf_counter()
            outputs, kept = await call_on(self.executor, runtime.chain, graphs, inputs, relative)
            self._record(chain_endpoint, BatchReport(rows, 1, time.perf_counter() - begun, [0.0]))
        kept_outputs = [
            KeptOutputs(start + index, blocks[start + index].name, kept[index]) for index in sorted(kept)
        ]
        return ChainResult(dict(outputs), kept_outputs, [block.name for block in blocks[start:stop]], version_)

    async def close(self) -> None:
        """Finish batched runs in flight and stop the worker threads."""
        for batcher in self._batchers.values():
            await batcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
