"""Served models ("endpoints") and the validation that writes the server's error messages.

An endpoint is one name a client can infer on: a model's full graph
(``digits_cnn``), one block (``digits_cnn.02_stage2``) or the chain of every
block (``digits_cnn.chain``), at one version. It knows its I/O specs, its
batching configuration and how to run; ``validate`` compares a request with the
specs and says what was expected and what came::

    digits_cnn.04_head input 'x' expects FP32 [-1,128,2,2], got FP32 [1,1,32,32]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from layerserve.proto.tensors import TensorSpec, datatype_name, describe

from .errors import AnswerTooLarge, InvalidInput, quoted

# What a response carries besides its tensors' bytes (names, shapes, ids): generous, so the
# estimate errs on the refusing side.
RESPONSE_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic-batching knobs for one endpoint."""

    enabled: bool = False
    # Rows one request or one merged run may carry; 0: no limit.
    max_batch_size: int = 0
    max_queue_delay_us: int = 0


@dataclass(frozen=True)
class BatchingOverrides:
    """Server flags that override every manifest's batching settings; None keeps the manifest's."""

    dynamic_batching: bool | None = None
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None

    def applied(self, enabled: bool, max_batch_size: int, max_queue_delay_us: int) -> Batching:
        """A manifest's settings with these overrides applied."""
        return Batching(
            enabled=enabled if self.dynamic_batching is None else self.dynamic_batching,
            max_batch_size=max_batch_size if self.max_batch_size is None else self.max_batch_size,
            max_queue_delay_us=max_queue_delay_us if self.max_queue_delay_us is None else self.max_queue_delay_us,
        )


@dataclass(frozen=True)
class Endpoint:
    """One served model name at one version; ``run`` is synchronous (called on a worker thread)."""

    name: str
    model: str
    version: str
    kind: str  # "full", "block" or "chain"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: Batching
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    block_index: int | None = None
    # The largest activation one row of a run holds (its input, a block's output), in bytes; 0 unknown.
    peak_row_bytes: int = 0

    def merge_rows(self, max_batch_bytes: int) -> int:
        """Rows a merged run may carry: max_batch_size (0: no limit), and no more than keep the largest
        activation within ``max_batch_bytes`` (at least 1: a request is never split)."""
        limit = self.batching.max_batch_size or 1 << 31
        if self.peak_row_bytes and max_batch_bytes:
            limit = min(limit, max(1, max_batch_bytes // self.peak_row_bytes))
        return limit

    # Derived from the specs, which never change: computed once, asked on every request.
    @functools.cached_property
    def batched(self) -> bool:
        """Whether the first dimension of every input is the batch (-1)."""
        return all(spec.shape[:1] == (-1,) for spec in self.inputs)

    @functools.cached_property
    def output_names(self) -> list[str]:
        """Every output's name, in the graph's order."""
        return [spec.name for spec in self.outputs]

    @functools.cached_property
    def _all_outputs_row_bytes(self) -> int | None:
        return answer_row_bytes(self.outputs, self.batched)

    def validate(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Check a request's inputs; returns its batch size (rows; 1 for unbatched endpoints).

        Raises InvalidInput naming the endpoint, the input, what was expected and what came.
        """
        return validate_inputs(self.name, self.inputs, inputs, self.batching.max_batch_size, self.batched)

    def answer_row_bytes(self, outputs: Sequence[str] = ()) -> int | None:
        """Bytes per request row of the answer (``outputs``, or all); None when a dimension is free."""
        if not outputs or outputs is self.output_names:
            return self._all_outputs_row_bytes
        return answer_row_bytes([spec for spec in self.outputs if spec.name in outputs], self.batched)

    def check_outputs(self, requested: Sequence[str]) -> list[str]:
        """The output names to return: ``requested`` (checked) or all outputs when empty (the endpoint's own
        list: callers must not change it)."""
        known = self.output_names
        for index, name in enumerate(requested):
            if name not in known:
                raise InvalidInput(f"{self.name} has no output {quoted(name)}; it gives {_listing(self.outputs)}")
            if name in requested[:index]:  # its parameters would differ between the two: neither may win silently
                raise InvalidInput(f"{self.name} output {quoted(name)} is requested twice")
        return list(requested) or known


def answer_row_bytes(specs: Sequence[TensorSpec], batched: bool = True) -> int | None:
    """Bytes the tensors ``specs`` take per request row (their whole size when not ``batched``); None if unknown."""
    total = 0
    for spec in specs:
        row = spec.row_bytes()
        if row is None or (not batched and spec.shape[:1] and spec.shape[0] < 0):
            return None
        total += row * (spec.shape[0] if not batched and spec.shape else 1)
    return total


def check_answer_size(label: str, rows: int, row_bytes: int | None, limit: int, batched: bool = True) -> None:
    """Refuse (AnswerTooLarge) a request whose answer of ``rows`` rows would exceed ``limit`` bytes.

    The message names the size, the limit and the largest batch that fits, so the
    client can split its request instead of losing the computation to gRPC's own
    RESOURCE_EXHAUSTED after the run.
    """
    if row_bytes is None or not limit:
        return
    rows = rows if batched else 1
    answer = rows * row_bytes + RESPONSE_OVERHEAD_BYTES
    if answer <= limit:
        return
    fits = max(0, (limit - RESPONSE_OVERHEAD_BYTES) // row_bytes) if row_bytes else 0
    advice = (
        f"send at most {fits} rows per request" if batched and fits
        else "raise the server's --max-message-bytes"
    )
    size = f"{answer:,} bytes ({rows} rows x {row_bytes:,} bytes)" if batched else f"{answer:,} bytes"
    raise AnswerTooLarge(f"{label} would answer {size}, over the server's message limit of {limit:,} bytes; {advice}")


def validate_inputs(
    label: str,
    specs: Sequence[TensorSpec],
    inputs: Mapping[str, np.ndarray],
    max_batch_size: int = 0,
    batched: bool = True,
) -> int:
    """Compare ``inputs`` with ``specs`` for the endpoint called ``label``; returns the batch size."""
    by_name = {spec.name: spec for spec in specs}
    for name, array in inputs.items():
        if name not in by_name:
            raise InvalidInput(
                f"{label} has no input {quoted(name)} (got {describe(array)}); it expects {_listing(specs)}"
            )
    rows: int | None = None
    for spec in specs:
        array = inputs.get(spec.name)
        if array is None:
            raise InvalidInput(f"{label} input {spec.name!r} expects {spec}, got nothing")
        if datatype_name(array.dtype) != spec.datatype or not spec.matches(array.shape):
            raise InvalidInput(f"{label} input {spec.name!r} expects {spec}, got {describe(array)}")
        if batched:
            if array.shape[0] < 1:
                raise InvalidInput(f"{label} input {spec.name!r} expects at least 1 row, got {describe(array)}")
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(
                    f"{label} inputs disagree on the batch size: {spec.name!r} has {array.shape[0]} rows, "
                    f"an earlier input {rows}"
                )
            rows = int(array.shape[0])
            if max_batch_size and rows > max_batch_size:
                raise InvalidInput(
                    f"{label} input {spec.name!r} expects at most {max_batch_size} rows "
                    f"(max_batch_size), got {describe(array)}"
                )
    return rows if rows is not None else 1


def _listing(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{spec.name!r} {spec}" for spec in specs) or "nothing"
