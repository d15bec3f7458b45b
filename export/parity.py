"""The chain check: running the blocks in order must reproduce the full graph.

Contract of :func:`chain_check`: on the CPU provider, feed ``inputs`` to the full
graph and to block 0, each block's output to the next, and compare the last
block's outputs with the full graph's. The comparison is relative to the scale of
the tensor compared: passing means max |diff| <= ``tolerance`` x max(1, max |full|),
so a ResNet-50 whose logits reach 110 may differ by float32 rounding (2.4e-5) while
a wrong chain (relative error of order 1) never passes. Failing raises
ChainMismatch naming the first block whose output strays from the same tensor of
the full graph by more than that.

A graph whose cuts carry FP16 (or BF16) tensors is checked at the precision of those
types instead (:func:`tolerance_for`): a block rounds its output to the type it
declares, where ONNX Runtime may keep the full graph's tensor wider (on the CPU it
runs many FP16 operators in FP32 and fuses across what are cuts here), so an FP16
ResNet's chain differs from its full graph by ~1e-4 of the output's scale without
anything being wrong.

The full graph's last outputs come from the graph as it is, not from the copy that also outputs every
cut tensor (which the per-block comparison reads): ONNX Runtime fuses across tensors a graph does not
output, so exposing the cuts can change what the full graph computes. A QDQ graph with INT8 activations on
a CPU without VNNI is such a case: ONNX Runtime fuses its QuantizeLinear/DequantizeLinear pairs into
integer operators only where each pair lies in one graph, and the blocks, which hand INT8 tensors across,
computed what the graph writes exactly while the full graph's fused operators differed from it by 10 %
of the output's scale; the check compared the blocks with the exposed copy and passed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .errors import GraphRefused, SplitError
from .runtime import cpu_session, describe_runtime_error
from .split import SplitResult

# Relative to max(1, max |full|): 1e-4 absolute for outputs within [-1, 1].
CHAIN_TOLERANCE = 1e-4
# For cuts narrower than FP32: this many units of the narrowest floating type's rounding (FP16: 7.8e-3).
ROUNDING_UNITS = 8


class ChainMismatch(SplitError):
    """The chain of blocks does not reproduce the full graph."""


@dataclass(frozen=True)
class ChainReport:
    """Max |chain - full| over the outputs, the same relative to the outputs' scale, and each block's
    relative difference against the full graph's tensor."""

    max_abs_diff: float
    max_rel_diff: float
    per_block: list[tuple[str, float]]
    tolerance: float = CHAIN_TOLERANCE


def _with_outputs(full: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``full`` that also outputs the tensors ``names`` (untyped: ONNX Runtime types them)."""
    model = onnx.ModelProto()
    model.CopyFrom(full)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.add().name = name
    return model


def tolerance_for(result: SplitResult, tolerance: float = CHAIN_TOLERANCE) -> float:
    """``tolerance``, or ROUNDING_UNITS roundings of the narrowest floating type a block takes or gives
    when that is coarser (FP16, BF16 cuts: module docstring)."""
    from onnx import helper

    coarsest = 0.0
    for block in result.blocks:
        for value in (*block.proto.graph.input, *block.proto.graph.output):
            elem = value.type.tensor_type.elem_type
            if elem == onnx.TensorProto.BFLOAT16:
                coarsest = max(coarsest, 2.0**-7)
            elif elem in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                coarsest = max(coarsest, float(np.finfo(helper.tensor_dtype_to_np_dtype(elem)).eps))
    return max(tolerance, ROUNDING_UNITS * coarsest)


def relative_diff(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max |got - want|, the same divided by max(1, max |want|)); NaN anywhere gives NaN."""
    if not want.size:
        return 0.0, 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    scale = max(1.0, float(np.max(np.abs(want))))
    return diff, diff / scale


def run_chain(result: SplitResult, inputs: np.ndarray, keep: bool = False) -> list[list[np.ndarray]]:
    """Each block's outputs for ``inputs``, block by block (only the last block's unless ``keep``)."""
    return run_chains(result, [inputs], keep)[0]


def run_chains(result: SplitResult, batches: list[np.ndarray], keep: bool = False) -> list[list[list[np.ndarray]]]:
    """:func:`run_chain` for each of ``batches``, making each block's session once (for a VGG-16 of 553 MB,
    making sessions was most of what a split took) and dropping it before the next."""
    currents = [[batch] for batch in batches]
    collected: list[list[list[np.ndarray]]] = [[] for _ in batches]
    for block in result.blocks:
        try:
            session = cpu_session(block.proto.SerializeToString())
            for position, current in enumerate(currents):
                currents[position] = session.run(None, dict(zip(block.inputs, current, strict=True)))
        except Exception as error:  # noqa: BLE001 - ONNX Runtime's own error types; one line for the user
            raise SplitError(f"block {block.name!r} does not run on what the blocks before it give "
                             f"({describe_runtime_error(error)}); the graph's declared shapes may not match what it "
                             "computes") from None
        if keep or block is result.blocks[-1]:
            for position, current in enumerate(currents):
                collected[position].append(current)
    return collected


def _check_declared(declared: object, computed: list[np.ndarray], what: str) -> None:
    """SplitError when an output's declared sizes disagree with what ONNX Runtime computed (the batch too:
    a block of a free-batch graph declaring one row): the manifest is written from the declared ones and
    the server validates against them, so a wrong declaration would be a model that splits but cannot serve."""
    for info, array in zip(declared, computed, strict=True):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        if len(dims) != array.ndim or any(want is not None and want != got
                                          for want, got in zip(dims, array.shape, strict=True)):
            shown = "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
            raise SplitError(f"{what} declares output {info.name!r} as {shown} but computes "
                             f"[{','.join(str(d) for d in array.shape)}]: a shape the file declares, or one inferred from it, "
                             "is wrong, and a model declaring it could not be served; nothing was written")


# Outputs far below 1 (an untrained timm EfficientNet's logits reach 1e-4) are also compared with their own
# size: a wrong chain is off by about that size, float32 rounding by a millionth of it.
OWN_SIZE_FRACTION = 0.01
OWN_SIZE_FLOOR = 1e-6


def _check_own_size(got: np.ndarray, want: np.ndarray, name: str, tolerance: float) -> None:
    """ChainMismatch when ``got`` strays from ``want`` by more than OWN_SIZE_FRACTION (or ten times the
    tolerance, for FP16 cuts) of ``want``'s own largest magnitude, plus OWN_SIZE_FLOOR."""
    if not want.size:
        return
    size = float(np.max(np.abs(want.astype(np.float64))))
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    allowed = max(OWN_SIZE_FRACTION, 10 * tolerance) * size + OWN_SIZE_FLOOR
    if not diff <= allowed:
        raise ChainMismatch(f"the chain of blocks does not reproduce the full graph: output {name!r} is at most "
                            f"{size:.3g} in size and the chain differs by {diff:.3g} (> {allowed:.3g})")


def chain_check(
    full: onnx.ModelProto, result: SplitResult, inputs: np.ndarray, tolerance: float = CHAIN_TOLERANCE
) -> ChainReport:
    """Compare the chain of ``result``'s blocks with ``full`` on ``inputs``; ChainMismatch past ``tolerance``
    (or what :func:`tolerance_for` allows FP16 cuts)."""
    return chain_checks(full, result, [inputs], tolerance)[0]


def chain_checks(
    full: onnx.ModelProto, result: SplitResult, batches: list[np.ndarray], tolerance: float = CHAIN_TOLERANCE
) -> list[ChainReport]:
    """:func:`chain_check` on each of ``batches`` (one report each), every session made once."""
    tolerance = tolerance_for(result, tolerance)
    boundary = [block.source_outputs for block in result.blocks]
    wanted = [name for names in boundary[:-1] for name in names]
    references = _full_outputs(_with_outputs(full, wanted), batches)
    if wanted:  # the last outputs from the graph as users run it (module docstring)
        for reference, finals in zip(references, _full_outputs(full, batches), strict=True):
            reference.update(finals)
    return [_compared(full, result, reference, outputs, tolerance)
            for reference, outputs in zip(references, run_chains(result, batches, keep=True), strict=True)]


INT8_QDQ_HINT = (
    " (a QDQ graph with INT8 activations: on a CPU without VNNI, ONNX Runtime fuses its QuantizeLinear/"
    "DequantizeLinear pairs into integer operators only inside one graph; quantized with UINT8 activations, "
    "quantize_static(..., activation_type=QuantType.QUInt8), ONNX Runtime's advice for x86, the blocks "
    "reproduce it; a full-integer TFLite model cannot be: split it on a CPU with VNNI, or serve the file whole "
    "from a Triton repository, config.pbtxt and 1/model.onnx)"
)


def int8_activations(full: onnx.ModelProto) -> bool:
    """Whether a QuantizeLinear of ``full`` gives INT8 (its zero point is an INT8 initializer)."""
    int8 = {t.name for t in full.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    return any(node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in int8
               for node in full.graph.node)


def _full_outputs(graph: onnx.ModelProto, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``graph``'s outputs by name for each of ``batches``, one session; SplitError in one line when ONNX Runtime
    cannot make or run it (a float64 CNN: its CPU provider has no float64 Conv)."""
    try:
        session = cpu_session(graph.SerializeToString())
        names = [o.name for o in session.get_outputs()]
        return [dict(zip(names, session.run(None, {session.get_inputs()[0].name: inputs}), strict=True))
                for inputs in batches]
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types
        wide = graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
        hint = ("; ONNX Runtime's CPU provider runs few float64 operators: export the model in float32 (model.float())"
                if wide else "")
        raise GraphRefused(f"{describe_runtime_error(error)}{hint}") from None


def _compared(full: onnx.ModelProto, result: SplitResult, reference: dict[str, np.ndarray],
              outputs: list[list[np.ndarray]], tolerance: float) -> ChainReport:
    """The report for one batch: each block's outputs against the full graph's same tensors (``reference``)."""
    _check_declared(full.graph.output, [reference[o.name] for o in full.graph.output], "the graph")
    for block, got in zip(result.blocks, outputs, strict=True):
        _check_declared(block.proto.graph.output, got, f"block {block.name!r}")
    per_block = []
    final_abs = 0.0
    for block, got in zip(result.blocks, outputs, strict=True):
        diffs = [relative_diff(g, reference[n]) for g, n in zip(got, block.source_outputs, strict=True)]
        per_block.append((block.name, max(rel for _, rel in diffs)))
        final_abs = max(absolute for absolute, _ in diffs)
    final = per_block[-1][1]
    if not final <= tolerance:  # also catches NaN
        first = next((name for name, diff in per_block if not diff <= tolerance), per_block[-1][0])
        raise ChainMismatch(
            f"the chain of blocks does not reproduce the full graph: max |diff| {final_abs:.3g}, "
            f"{final:.3g} of the output's scale > {tolerance:g}; block {first!r} is the first to diverge"
            + (INT8_QDQ_HINT if int8_activations(full) else "")
        )
    for got, name in zip(outputs[-1], result.blocks[-1].source_outputs, strict=True):
        _check_own_size(got, reference[name], name, tolerance)
    return ChainReport(max_abs_diff=final_abs, max_rel_diff=final, per_block=per_block, tolerance=tolerance)
