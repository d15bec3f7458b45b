"""The transport-free core: everything a servicer asks of the server, over a loaded Repository.

Servicers (gRPC today, any other transport tomorrow) convert a request, call one
method here and convert the answer back; they hold no logic of their own. The
DataPlane answers readiness, metadata, statistics, the repository index and the
block listing, and runs inference and chains: it validates (endpoints.py),
batches (batching.py) or runs directly on the worker threads, keeps Triton-style
statistics per endpoint (statistics.py) and reports to one observer
(observer.py). It knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerserve.proto import names, triton
from layerserve.proto.model_config_pb2 import ModelConfig
from layerserve.proto.repository_pb2 import ModelManifest
from layerserve.proto.tensors import TensorSpec

from . import runtime
from .batching import Batcher, BatchReport, call_timed
from .busy_workers import WorkerBoard
from .classification import classified, encoded_bytes
from .drain import Gate
from .endpoints import RESPONSE_OVERHEAD_BYTES, Endpoint, answer_row_bytes, check_answer_size, validate_inputs
from .errors import AnswerTooLarge, InvalidInput, RequestExpired, quoted
from .observer import Observer, Silent
from .repository import READY, ModelVersion, Repository
from .runtime import CUDA
from .slots import RunSlots
from .statistics import Stats, StatsTable

# What ModelMetadata calls the backend of every served name.
PLATFORM = "onnxruntime_onnx"
# A request that starts this soon after another one ended is taken for load, not for a lone client:
# with clients waiting, the next one starts within tens of microseconds of the last answer, while a
# lone client's next request takes its round trip (~0.2 ms and more from Python).
QUIET_S = 1e-4
# Class strings built on the event loop at most (~5 ms); more are built on a thread (DataPlane._classified).
CLASSES_ON_THE_LOOP = 8192


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
class ModelInfo:
    """ModelMetadata's answer for one served name."""

    name: str
    versions: list[str]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class EndpointStatistics:
    """One served name's statistics at one version."""

    name: str
    version: str
    stats: Stats


@dataclass(frozen=True)
class IndexEntry:
    """One line of the repository index: a served name, its version and state (the reason when unavailable)."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class BlockListing:
    """ListBlocks' answer: the manifest, providers in use, served names and the message limit."""

    manifest: ModelManifest
    providers: list[str]
    full_model_name: str
    block_model_names: list[str]
    chain_model_name: str
    max_message_bytes: int


@dataclass(frozen=True)
class ChainResult:
    """The last block's outputs by tensor name, the kept blocks' outputs in block order, and what ran."""

    outputs: dict[str, np.ndarray]
    kept: list[KeptOutputs]
    blocks_run: list[str]
    model: ModelVersion


def _as_served(model: ModelVersion) -> ModelManifest:
    """``model``'s manifest with the batching its chain runs with (``--max-batch-size`` and the other overrides
    applied): clients size their requests from it, and the file's 64 rows were refused by a server run with 8."""
    chain = model.endpoints.get(names.chain_name(model.name))
    if chain is None:  # a Triton model served whole, without blocks
        return model.manifest
    batching = chain.batching
    served = batching.max_batch_size, batching.enabled, batching.max_queue_delay_us
    serving = model.manifest.serving
    if served == (serving.max_batch_size, serving.dynamic_batching, serving.max_queue_delay_us):
        return model.manifest
    manifest = ModelManifest()
    manifest.CopyFrom(model.manifest)
    manifest.serving.max_batch_size, manifest.serving.dynamic_batching, manifest.serving.max_queue_delay_us = served
    return manifest


class DataPlane:
    """Everything the servicers ask, over ``repository``; async methods run on one event loop.

    ``instances``: how many runs one endpoint may have at once, on worker threads (0: one, on the
    event loop itself; None: one while the endpoint's runs are short, up to ``cores`` while they are
    long: server/slots.py). ``max_message_bytes`` is the transport's limit: a request whose answer
    would exceed it is refused before it runs (0: no check).
    """

    def __init__(self, repository: Repository, instances: int | None = 1, max_queue_size: int = 1024,
                 max_message_bytes: int = 64 << 20, observer: Observer | None = None,
                 max_batch_bytes: int = 64 << 20, cores: int = 1, board: WorkerBoard | None = None,
                 stats_folder: Path | None = None) -> None:
        self.repository = repository
        self.instances = instances
        self._most_runs = max(1, cores if instances is None else instances)
        self.max_queue_size = max_queue_size
        # The gRPC message limit, both ways, this server runs with (``--max-message-bytes``, or derived
        # from the models by server/limits.py); one value, fixed once the repository is loaded.
        self.max_message_bytes = max_message_bytes
        # Merging stops before a merged batch's largest activation passes this (Endpoint.merge_rows).
        self.max_batch_bytes = max_batch_bytes
        self.executor = ThreadPoolExecutor(self._most_runs, thread_name_prefix="ort") if instances != 0 else None
        # Runs in flight per worker process, shared with the other workers (server/busy_workers.py); None alone.
        self.board = board
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._slots: dict[tuple[str, str], RunSlots] = {}
        # Triton's statistics of every served name and version: this process's, in a file of
        # ``stats_folder`` that every worker reads (server/statistics.py); in memory when serving alone.
        self.stats = StatsTable(((served, model.version) for model in repository.versions() for served in model.endpoints),
                                stats_folder)
        # Set on SIGTERM: readiness turns false while in-flight requests finish.
        self.draining = False
        # Every RPC passes it (rpc.handled); closed on SIGTERM so new ones get UNAVAILABLE.
        self.gate = Gate()
        # Sees every RPC outcome (through rpc.handled), every run and every request dropped unrun.
        self.observer: Observer = observer or Silent()
        self._in_flight = 0
        self._last_active = time.monotonic()

    # -- what the servicers ask ----------------------------------------------------------------

    def server_ready(self) -> bool:
        """Ready once loaded, while not draining; an unavailable model does not make the server unready."""
        return not self.draining

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the served ``name`` takes requests now (unknown names are simply not ready)."""
        return not self.draining and self.repository.is_ready(name, version)

    def endpoint(self, name: str, version: str = "") -> Endpoint:
        """The endpoint serving ``name``; ModelNotFound or ModelUnavailable otherwise.

        A transport resolves the name before it decodes any tensor, so an unknown name is
        NOT_FOUND whatever its tensors hold.
        """
        return self.repository.endpoint(name, version)

    def metadata(self, name: str, version: str = "") -> ModelInfo:
        """ModelMetadata: the served name's I/O and the ready versions serving it."""
        endpoint = self.repository.endpoint(name, version)
        model = self.repository.models[endpoint.model]
        versions = [v for v in sorted(model, key=int) if model[v].ready and name in model[v].endpoints]
        return ModelInfo(endpoint.name, versions, PLATFORM, endpoint.inputs, endpoint.outputs)

    def config(self, name: str, version: str = "") -> ModelConfig:
        """ModelConfig: what ``name`` serves, stated as Triton's config.pbtxt would (dims without the batch
        when max_batch_size > 0). A Triton model's full graph keeps the rest of its own config.pbtxt."""
        endpoint = self.repository.endpoint(name, version)
        model = self.repository.models[endpoint.model][endpoint.version]
        batching = endpoint.batching
        return triton.model_config(
            endpoint.name, endpoint.inputs, endpoint.outputs, endpoint.batched, batching.max_batch_size,
            batching.enabled, batching.max_queue_delay_us, self._most_runs, CUDA in model.providers,
            base=model.config if endpoint.kind == "full" else None,
        )

    def statistics(self, name: str = "", version: str = "") -> list[EndpointStatistics]:
        """ModelStatistics of ``name`` (every served name when empty), at ``version`` (every one when empty)."""
        if name:
            self.repository.endpoint(name, version)  # NOT_FOUND for unknown names
        found = []
        totals = self.stats.read()
        for model in self.repository.versions():
            if version and model.version != version:
                continue
            for served in model.endpoints:
                if name in ("", served):
                    found.append(EndpointStatistics(served, model.version, totals.get((served, model.version)) or Stats()))
        return found

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """RepositoryIndex: every served name of every version; an unavailable version lists its model name."""
        entries = []
        for model in self.repository.versions():
            if ready_only and not model.ready:
                continue
            for served in list(model.endpoints) if model.ready else [model.name]:
                entries.append(IndexEntry(served, model.version, model.state, "" if model.state == READY else model.reason))
        return entries

    def blocks(self, name: str, version: str = "") -> BlockListing:
        """ListBlocks: the manifest of the model serving ``name`` (any of its served names), its providers,
        its served names and the message limit clients must size requests to."""
        model = self.repository.model(name, version)
        return BlockListing(_as_served(model), model.providers, model.name, model.block_names,
                            names.chain_name(model.name), self.max_message_bytes)

    # -- running --------------------------------------------------------------------------------

    def _batcher(self, endpoint: Endpoint) -> Batcher:
        key = (endpoint.name, endpoint.version)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = Batcher(
                endpoint.run,
                self.executor,
                endpoint.merge_rows(self.max_batch_bytes),
                endpoint.batching.max_queue_delay_us,
                self.max_queue_size,
                self._run_slots(endpoint),
                on_batch=lambda report: self._record(endpoint, report),
                label=endpoint.name,
                on_drop=lambda reason: self._dropped(endpoint, reason),
                alone=self._alone if self.executor is not None else None,
                spread=lambda run: self._spread(endpoint, run),
            )
            self._batchers[key] = batcher
        return batcher

    def _run_slots(self, endpoint: Endpoint) -> RunSlots:
        """The endpoint's slots: its runs, batched or not, share them."""
        key = (endpoint.name, endpoint.version)
        if key not in self._slots:
            fixed = None if self.instances is None else max(1, self.instances)
            self._slots[key] = RunSlots(fixed, self._most_runs, board=self.board if fixed is None else None)
        return self._slots[key]

    def _alone(self) -> bool:
        """Whether the request asking is the only one in the server and none ended within QUIET_S: then
        nothing can merge with it, and a short run may go on the event loop instead of a thread."""
        return self._in_flight == 1 and time.monotonic() - self._last_active >= QUIET_S

    def _spread(self, endpoint: Endpoint, fn: Callable) -> Callable:
        """``fn``, made to run on every core (runtime.on_every_core) when its request is the only one in this
        worker, the endpoint's runs are long (slots.EVERY_CORE_RUN_S) and no other worker is running: a lone ResNet-50 client
        otherwise gets one core of the machine (1 intra-op thread per session, which serves many small
        requests best)."""
        if (self._in_flight == 1 and self._run_slots(endpoint).worth_every_core
                and (self.board is None or self.board.others_idle())):
            return functools.partial(runtime.on_every_core, fn)
        return fn

    async def _run(self, endpoint: Endpoint, fn: Callable, *args: object) -> tuple[object, float]:
        """``fn(*args)`` on a worker thread within the endpoint's slots (on the event loop when the request
        is alone and the runs short, RunSlots.take_for_loop, or the other workers hold every core,
        RunSlots.run_here); (result, seconds it ran)."""
        slots = self._run_slots(endpoint)
        here = self.executor is not None and self._alone() and slots.take_for_loop()
        if not here:
            await slots.acquire()
            here = slots.run_here()
        seconds: float | None = None
        try:
            result, seconds = await call_timed(None if here else self.executor,
                                               fn if here else self._spread(endpoint, fn), *args)
            return result, seconds
        finally:
            await slots.release(seconds)

    def _record(self, endpoint: Endpoint, report: BatchReport) -> None:
        self.stats.entry(endpoint.name, endpoint.version).record_run(
            report.rows, report.requests, report.compute_s, report.queue_s
        )
        self.observer.run(endpoint, report)

    def _dropped(self, endpoint: Endpoint, reason: str) -> None:
        self.observer.dropped(endpoint, reason)

    async def infer(
        self,
        model: str | Endpoint,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        deadline: float | None = None,
        classification: Mapping[str, int] | None = None,
    ) -> InferResult:
        """Run ``model`` (any served name, or the endpoint :meth:`endpoint` resolved) on ``inputs``;
        returns the requested outputs (all when empty), each named in ``classification`` as its top that
        many classes (Triton's classification extension, server/classification.py).

        ``deadline`` is a ``time.monotonic()`` instant: a request still queued past it is dropped
        unrun (RequestExpired), as is one whose caller cancelled (its task is cancelled).
        Raises ModelNotFound, ModelUnavailable, InvalidInput, AnswerTooLarge, QueueFull, RequestExpired.
        """
        endpoint = model if isinstance(model, Endpoint) else self.repository.endpoint(model, version)
        with self._accounted(endpoint):
            names = endpoint.check_outputs(outputs)
            if classification:
                endpoint.check_outputs(list(classification))
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
                results, seconds = await self._run(endpoint, endpoint.run, inputs)
                self._record(endpoint, BatchReport(rows, 1, seconds, [0.0]))
            answer = {name: results[name] for name in names}
            if classification:
                answer = await self._classified(endpoint, answer, classification, rows)
        return InferResult(endpoint, answer)

    async def _classified(self, endpoint: Endpoint, answer: dict[str, np.ndarray], counts: Mapping[str, int],
                          rows: int) -> dict[str, np.ndarray]:
        """``answer`` with the outputs in ``counts`` as their top classes; AnswerTooLarge when the strings
        outgrow the message limit (their size is known only once built: the check before the run counts the
        tensors). Many strings are built on a thread, so other requests are not held for them."""
        labels = self.repository.models[endpoint.model][endpoint.version].labels
        build = functools.partial(classified, answer, counts, endpoint.batched, labels)
        many = sum(counts.values()) * (rows if endpoint.batched else 1) > CLASSES_ON_THE_LOOP
        answer = await asyncio.get_running_loop().run_in_executor(None, build) if many else build()
        size = sum(encoded_bytes(array) for array in answer.values()) + RESPONSE_OVERHEAD_BYTES
        if self.max_message_bytes and size > self.max_message_bytes:
            raise AnswerTooLarge(f"{endpoint.name} would answer {size:,} bytes of classes, over the server's "
                                 f"message limit of {self.max_message_bytes:,} bytes; ask fewer classes or "
                                 f"send fewer rows")
        return answer

    @contextmanager
    def _accounted(self, endpoint: Endpoint) -> Iterator[None]:
        """Count the request as a success or a failure of ``endpoint`` (Triton's success/fail durations)."""
        stats = self.stats.entry(endpoint.name, endpoint.version)
        start = time.perf_counter()
        self._in_flight += 1
        try:
            yield
        except BaseException:  # cancellation included: the request failed for its caller
            stats.failed(time.perf_counter() - start)
            raise
        finally:
            self._in_flight -= 1
            self._last_active = time.monotonic()
        stats.succeeded(time.perf_counter() - start, int(time.time() * 1000))

    def idle_seconds(self) -> float:
        """Seconds since the last inference or chain ended; 0 while one runs (the memory janitor asks)."""
        return 0.0 if self._in_flight else time.monotonic() - self._last_active

    def chain_model(self, name: str, version: str = "") -> ModelVersion:
        """The model version a Chain names (a model name, not a block's or the chain's); a transport
        resolves it before it decodes any tensor. ModelNotFound, ModelUnavailable, InvalidInput."""
        model = self.repository.model(name, version)
        if name != model.name:
            raise InvalidInput(f"Chain takes a model name such as {model.name!r}, got {quoted(name)}")
        return model

    async def chain(
        self,
        model: str | ModelVersion,
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
        version_ = model if isinstance(model, ModelVersion) else self.chain_model(model, version)
        model = version_.name
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
            (outputs, kept), seconds = await self._run(chain_endpoint, version_.chain, inputs, start, stop, keep)
            self._record(chain_endpoint, BatchReport(rows, 1, seconds, [0.0]))
        kept_outputs = [KeptOutputs(index, blocks[index].name, kept[index]) for index in sorted(kept)]
        return ChainResult(dict(outputs), kept_outputs, [block.name for block in blocks[start:stop]], version_)

    async def close(self) -> None:
        """Finish batched runs in flight and stop the worker threads."""
        for batcher in self._batchers.values():
            await batcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
