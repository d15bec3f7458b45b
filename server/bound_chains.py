"""Chains at small batches with every tensor bound in advance: ONNX Runtime's IO binding.

At batch 1 a block of a small CNN runs in tens of microseconds, and a plain ``session.run``
spends a good part of that wrapping numpy arrays and allocating outputs. A bound chain
allocates each tensor once per input shape, binds every graph's inputs and outputs to those
buffers, and then only copies the request in and the answer out. Each thread keeps its own
bound chains (a binding is not shared between concurrent runs), for a few shapes at most, and
only where the saving is worth the memory: batches of up to MAX_ROWS rows whose tensors take
MAX_BYTES at most (a 224x224 ResNet's do not, and its blocks' compute dwarfs the saving). So a
thread holds at most SHAPES_PER_THREAD x MAX_BYTES per model version, whatever clients send.

Measured on digits_cnn (docs/BENCHMARKS.md, "Bound chains"): in process, the chain's cost over
the full graph fell from 110-136 to 50-78 us at batch 1 and from ~190 to ~120 us at batch 8.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from . import runtime
from .errors import bounded

log = logging.getLogger(__name__)

MAX_ROWS = 8  # bound chains for batches up to this size; larger ones run plain
MAX_BYTES = 1 << 20  # all the tensors of one bound chain, inputs included
SHAPES_PER_THREAD = 4  # bound chains a thread keeps per BlockChain, least recently used dropped first

Outputs = dict[str, np.ndarray]


class BoundChain:
    """``graphs`` at one input shape, each input and output bound to a buffer allocated once."""

    def __init__(self, graphs: Sequence[runtime.Graph], tensors: Mapping[str, np.ndarray]) -> None:
        """``tensors``: every tensor of one plain run at this shape (feeds and all outputs), by name."""
        self.buffers = {name: np.empty_like(array) for name, array in tensors.items()}
        self.steps = []
        for graph in graphs:
            binding = graph.session.io_binding()
            for spec in graph.inputs:
                _bind(binding.bind_input, spec.name, self.buffers[spec.name])
            for spec in graph.outputs:
                _bind(binding.bind_output, spec.name, self.buffers[spec.name])
            self.steps.append((graph.session, binding, [spec.name for spec in graph.outputs]))

    def run(self, feeds: Mapping[str, np.ndarray], keep: Sequence[int]) -> tuple[Outputs, dict[int, Outputs]]:
        for name, array in feeds.items():
            np.copyto(self.buffers[name], array)
        kept: dict[int, Outputs] = {}
        for position, (session, binding, names) in enumerate(self.steps):
            session.run_with_iobinding(binding)
            if position in keep:
                kept[position] = {name: self.buffers[name].copy() for name in names}
        return {name: self.buffers[name].copy() for name in self.steps[-1][2]}, kept


def _bind(bind, name: str, buffer: np.ndarray) -> None:
    bind(name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)


class BoundChains:
    """Per thread, the bound chains of the shapes met last (None for a shape that runs plain)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def run(self, key: tuple, graphs: Sequence[runtime.Graph], feeds: Mapping[str, np.ndarray],
            keep: Sequence[int]) -> tuple[Outputs, dict[int, Outputs]]:
        """The chain of ``graphs`` on ``feeds``; ``key`` names the graphs (the same key, the same graphs)."""
        if runtime.on_every_core_now():  # a long run given every core: the graphs' own runs pick that session
            return runtime.chain(graphs, feeds, keep)
        cache: OrderedDict | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        shapes = (key, tuple((name, array.shape, array.dtype.str) for name, array in feeds.items()))
        if shapes in cache:
            cache.move_to_end(shapes)
            bound = cache[shapes]
            if bound is not None:
                try:
                    return bound.run(feeds, keep)
                except Exception as error:  # noqa: BLE001 - a shape the first run did not foretell: plain from now
                    cache[shapes] = None
                    _unbound(error)
            return runtime.chain(graphs, feeds, keep)
        while len(cache) >= SHAPES_PER_THREAD:
            cache.popitem(last=False)
        cache[shapes] = None  # until bound below
        if not _bindable(graphs):
            return runtime.chain(graphs, feeds, keep)
        # A new shape: a plain run, every output kept, gives this answer and every tensor's size.
        outputs, every = runtime.chain(graphs, feeds, range(len(graphs)))
        tensors = {**feeds, **{name: array for values in every.values() for name, array in values.items()}}
        if sum(array.nbytes for array in tensors.values()) <= MAX_BYTES:
            try:
                cache[shapes] = BoundChain(graphs, tensors)
            except Exception as error:  # noqa: BLE001 - the plain chain serves; said once per shape
                _unbound(error)
        return outputs, {position: every[position] for position in keep}


def _unbound(error: Exception) -> None:
    log.warning("chain runs unbound at this shape", extra={"fields": {"reason": bounded(str(error), 200)}})


def _bindable(graphs: Sequence[runtime.Graph]) -> bool:
    """Whether ``graphs`` can run bound: on host memory, every output's shape fixed past the batch (an output
    sized by the data, such as a detector's NonMaxSuppression, would not fit a buffer sized by the first
    request). Asked once per shape, not per request."""
    return all(graph.value_device is None and all(dim >= 0 for spec in graph.outputs for dim in spec.shape[1:])
               for graph in graphs)


def small_batch(feeds: Mapping[str, np.ndarray]) -> bool:
    """Whether ``feeds`` are host arrays of 1 to MAX_ROWS rows: the requests a bound chain may serve."""
    return all(isinstance(a, np.ndarray) and a.ndim and 1 <= a.shape[0] <= MAX_ROWS for a in feeds.values())
