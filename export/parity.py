"""The chain check: running the blocks in order must reproduce the full graph.

Contract of :func:`chain_check`: on the CPU provider, feed ``inputs`` to the full
graph and to block 0, each block's output to the next, and compare the last
block's outputs with the full graph's. Passing means max |diff| <= ``tolerance``.
Failing raises ChainMismatch naming the first block whose output strays from the
same tensor of the full graph by more than the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .graph import SplitError
from .runtime import cpu_session
from .split import SplitResult

CHAIN_TOLERANCE = 1e-5


class ChainMismatch(SplitError):
    """The chain of blocks does not reproduce the full graph."""


@dataclass(frozen=True)
class ChainReport:
    """Max |chain - full| over the outputs, and each block's max |diff| against the full graph's tensor."""

    max_abs_diff: float
    per_block: list[tuple[str, float]]


def _with_outputs(full: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``full`` that also outputs the tensors ``names`` (types from inferred shapes)."""
    inferred = onnx.shape_inference.infer_shapes(full, data_prop=True)
    infos = {info.name: info for info in inferred.graph.value_info}
    model = onnx.ModelProto()
    model.CopyFrom(inferred)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(infos[n] for n in names if n not in present)
    return model


def run_chain(result: SplitResult, inputs: np.ndarray, keep: bool = False) -> list[list[np.ndarray]]:
    """Each block's outputs for ``inputs``, block by block (only the last block's unless ``keep``)."""
    current = [inputs]
    collected = []
    for block in result.blocks:
        session = cpu_session(block.proto.SerializeToString())
        current = session.run(None, dict(zip(block.inputs, current, strict=True)))
        if keep or block is result.blocks[-1]:
            collected.append(current)
    return collected


def chain_check(
    full: onnx.ModelProto, result: SplitResult, inputs: np.ndarray, tolerance: float = CHAIN_TOLERANCE
) -> ChainReport:
    """Compare the chain of ``result``'s blocks with ``full`` on ``inputs``; ChainMismatch past ``tolerance``."""
    boundary = [block.source_outputs for block in result.blocks]
    wanted = [name for names in boundary[:-1] for name in names]
    reference_model = _with_outputs(full, wanted)
    session = cpu_session(reference_model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(None, {session.get_inputs()[0].name: inputs}), strict=True))
    outputs = run_chain(result, inputs, keep=True)
    per_block = []
    for block, got in zip(result.blocks, outputs, strict=True):
        diff = max(float(np.max(np.abs(g - reference[n]))) if g.size else 0.0 for g, n in
                   zip(got, block.source_outputs, strict=True))
        per_block.append((block.name, diff))
    final = per_block[-1][1]
    if not final <= tolerance:  # also catches NaN
        first = next((name for name, diff in per_block if not diff <= tolerance), per_block[-1][0])
        raise ChainMismatch(
            f"the chain of blocks does not reproduce the full graph: max |diff| {final:.3g} > {tolerance:g}; "
            f"block {first!r} is the first to diverge"
        )
    return ChainReport(max_abs_diff=final, per_block=per_block)
