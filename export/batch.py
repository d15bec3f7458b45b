"""The batch dimension of a graph from elsewhere: dynamic, made dynamic, or honestly fixed.

``torch.onnx.export(model, x, "m.onnx")`` without ``dynamic_axes`` or ``dynamic_shapes``
writes a graph whose input is ``[1, 3, 224, 224]`` and whose Reshapes carry the 1 in
constant shapes: ``[1, -1]`` for a flatten and ``[1, 2, 24, 28, 28]`` for a channel
shuffle from the TorchScript-based exporter, ``[1, 256]`` with ``allowzero=1`` from the
dynamo exporter (the default one since torch 2.9). Served as if the batch were free,
merged requests break inside those Reshapes.

:func:`resolve_batch` decides, by running the graph on ONNX Runtime:

* the input's first dimension is symbolic and the graph runs at two batch sizes,
  with each row's answer independent of the others: **dynamic**, unchanged;
* otherwise, when ``make_dynamic`` allows: the first dimension of the input and
  the outputs becomes the symbolic ``batch`` and every input-dependent Reshape
  whose constant target shape starts with the fixed batch gets ``0`` there
  (ONNX's "copy this dimension from the input"; a dynamo Reshape's ``allowzero``, which
  would make that 0 an empty dimension and changes nothing for a shape without zeros, is
  turned off), and every input-dependent Resize whose constant ``sizes`` start with it
  takes that first size from its own input (dynamo writes ``F.interpolate(size=...)`` so).
  The rewrite is kept only when
  the new graph, at the fixed batch, at 1 row and at one row more, gives each row
  exactly what the original graph gives it: **made dynamic**;
* else **fixed**: the manifest says the fixed size, the server never merges
  requests for it, and other batch sizes are refused with expected and got.

An input that reads as one picture (a fixed ``[224, 224, 3]`` or ``[3, 224, 224]``) and whose first
dimension no output carries has **no batch** at all: the graph adds its own batch of 1 inside. It is
served fixed too, and said so instead of "requests must have exactly 224 rows".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layerserve.proto.pictures import input_layout

from .foreign import BATCH_DIM
from .graph import constant_values

# Rows of the rewritten graph must match the original's this closely (relative to the output's scale).
ROW_TOLERANCE = 1e-5


@dataclass(frozen=True)
class BatchResolution:
    """The graph to split and serve, and what its batch dimension is."""

    proto: onnx.ModelProto
    # None: dynamic (any batch); an int: the only batch size the graph accepts.
    fixed: int | None
    note: str
    # A dynamic graph whose rows change each other's answers (DynamicQuantizeLinear takes one scale over the
    # whole batch): the server must never merge requests into one run.
    rows_interact: bool = False
    # False: the input's first dimension is no batch (a graph that takes one picture and adds its own batch);
    # served as a fixed shape, each request one sample.
    batched: bool = True


def check_sizes(fixed: int | None) -> tuple[int, ...]:
    """Batch sizes a graph is run at to check it: two for a dynamic batch, the fixed one otherwise."""
    return (1, 2) if fixed is None else (fixed,)


def declared_shape(proto: onnx.ModelProto) -> list[int]:
    """The input's shape as the graph declares it, -1 for a symbolic dimension."""
    return [d.dim_value if d.HasField("dim_value") else -1 for d in proto.graph.input[0].type.tensor_type.shape.dim]


def declared_batch(proto: onnx.ModelProto) -> int | None:
    """The input's first dimension when it is a number, None when it is symbolic."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


def resolve_batch(proto: onnx.ModelProto, make_dynamic: bool = True) -> BatchResolution:
    """Decide the batch dimension of ``proto`` (see the module docstring); SplitError if the graph does not run."""
    declared = declared_batch(proto)
    if declared is None:
        failure = _row_independence_failure(proto, proto, 1)
        if failure is None:
            return BatchResolution(proto, None, "dynamic")
        if failure.startswith(_ROWS_DIFFER):
            mixers = sorted({node.op_type for node in proto.graph.node if node.op_type in _ROW_MIXERS})
            why = f" ({', '.join(mixers)} takes one scale over the whole batch)" if mixers else ""
            return BatchResolution(proto, None, f"dynamic, but the rows of a request change each other's answers{why}: "
                                   "the server never merges requests", rows_interact=True)
        # Symbolic in name only: something inside is fixed at one row.
        fixed, reason = 1, f"declared dynamic, but {failure}"
        original = _with_batch(proto, 1)
    else:
        unbatched = _unbatched_note(proto, declared)
        if unbatched is not None:
            return BatchResolution(proto, declared, unbatched, batched=False)
        fixed, reason, original = declared, f"fixed at {declared} in the graph", proto
    if make_dynamic:
        candidate, rewritten = _dynamic_candidate(original, fixed)
        failure = _row_independence_failure(original, candidate, fixed)
        if failure is None:
            what = _rewrites(rewritten)
            return BatchResolution(candidate, None, f"made dynamic ({reason}; {what}; checked row by row)")
        if failure.startswith(_ROWS_DIFFER):
            reason += f"; made dynamic, {failure}"
        else:
            reason += f"; not made dynamic: {failure}"
    rows = f"{fixed} row{'s' if fixed != 1 else ''}"
    return BatchResolution(original, fixed, f"fixed at {fixed} ({reason}; requests must have exactly {rows})")


def _unbatched_note(proto: onnx.ModelProto, declared: int) -> str | None:
    """The note for an input that is one picture with no batch dimension: its shape reads so
    (proto/pictures.py: a fixed ``[224, 224, 3]`` or ``[3, 224, 224]``) and no output carries its first
    dimension (answered ``[1, 1000]``: the graph adds its own batch). None where that first dimension may be a
    batch: one row, a four-axis input (a detector at a fixed batch of 4 whose NMS drops it stays "fixed at
    4"), or an output with as many rows. SplitError when the graph does not run."""
    layout = input_layout(declared_shape(proto))
    if declared < 2 or layout is None or layout.batched:
        return None
    from .foreign import run_probe

    rows, outputs = run_probe(proto, declared)
    if any(output.ndim and output.shape[0] == declared for output in outputs):
        return None
    shape, answers = _listed(rows.shape), ", ".join(_listed(output.shape) for output in outputs[:4])
    return (f"none: the input {shape} is one sample with no batch dimension (no output has {declared} rows: "
            f"{answers}); each request is one {shape} sample, never merged")


def _listed(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _rewrites(counts: dict[str, int]) -> str:
    """"2 Reshape target shapes and 4 Resize sizes rewritten", or "no rewrite needed"."""
    parts = [f"{count} Reshape target shape{'s' if count != 1 else ''}" if op == "Reshape" else f"{count} {op} sizes"
             for op, count in counts.items() if count]
    return f"{' and '.join(parts)} rewritten" if parts else "no rewrite needed"


def _with_batch(proto: onnx.ModelProto, size: int) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for value in [copy.graph.input[0], *copy.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = size
    return copy


def _input_dependent(graph: onnx.GraphProto) -> set[str]:
    found = {graph.input[0].name}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(name in found for name in node.input):
            found.update(name for name in node.output if name)
    return found


def _dynamic_candidate(proto: onnx.ModelProto, fixed: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``proto`` with a symbolic batch on its input and outputs and batch-carrying constant shapes rewritten:
    Reshape targets (the batch becomes 0, "copy") and Resize sizes (the batch read from the Resize's own
    input: dynamo writes an upsample as ``Resize(sizes=[1, C, 2H, 2W])``); how many of each."""
    candidate = onnx.ModelProto()
    candidate.CopyFrom(proto)
    graph = candidate.graph
    for value in [graph.input[0], *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and (not dims[0].HasField("dim_value") or dims[0].dim_value == fixed):
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    del graph.value_info[:]  # shapes inferred for the fixed batch are stale
    dependent = _input_dependent(graph)
    constants = constant_values(graph)
    taken = {name for node in graph.node for name in [*node.input, *node.output]} | set(constants)
    rewritten = {"Reshape": 0, "Resize": 0}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[0] in dependent:
            rewritten["Reshape"] += _copy_batch_in_target(graph, node, constants.get(node.input[1]), fixed, taken)
        elif node.op_type == "Resize" and len(node.input) > 3 and node.input[0] in dependent:
            reads = _batch_read_for_sizes(graph, node, constants.get(node.input[3]), fixed, taken)
            nodes.extend(reads)
            rewritten["Resize"] += bool(reads)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return candidate, rewritten


def _copy_batch_in_target(graph: onnx.GraphProto, node: onnx.NodeProto, shape: np.ndarray | None, fixed: int,
                          taken: set[str]) -> int:
    """Point a Reshape whose constant target starts with the fixed batch at one starting with 0; 1 if done."""
    if shape is None or shape.ndim != 1 or len(shape) == 0 or int(shape[0]) != fixed:
        return 0
    allow_zero = next((a for a in node.attribute if a.name == "allowzero"), None)
    if allow_zero is not None and allow_zero.i:
        if np.any(shape == 0):
            return 0  # a zero there means an empty dimension; a 0 to copy the batch would too
        allow_zero.i = 0  # the same for a shape without zeros, and lets 0 mean "copy"
    new_shape = shape.copy()
    new_shape[0] = 0
    name = _fresh(f"{node.input[1]}_dynamic_batch", taken)
    graph.initializer.append(numpy_helper.from_array(new_shape.astype(np.int64), name))
    node.input[1] = name
    return 1


def _batch_read_for_sizes(graph: onnx.GraphProto, node: onnx.NodeProto, sizes: np.ndarray | None, fixed: int,
                          taken: set[str]) -> list[onnx.NodeProto]:
    """For a Resize whose constant ``sizes`` start with the fixed batch (and name every axis): nodes that make
    its sizes from its own input's batch and the rest, the Resize pointed at them; [] otherwise."""
    if sizes is None or sizes.ndim != 1 or len(sizes) < 2 or int(sizes[0]) != fixed:
        return []
    if any(attribute.name == "axes" for attribute in node.attribute):
        return []
    shape, batch, sized = (_fresh(f"{node.input[3]}_{part}", taken) for part in ("input_shape", "batch", "dynamic"))
    first, rest = (_fresh(f"{node.input[3]}_{part}", taken) for part in ("first", "rest"))
    graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), first),
                              numpy_helper.from_array(sizes[1:].astype(np.int64), rest)])
    reads = [helper.make_node("Shape", [node.input[0]], [shape], name=shape),
             helper.make_node("Gather", [shape, first], [batch], name=batch, axis=0),
             helper.make_node("Concat", [batch, rest], [sized], name=sized, axis=0)]
    node.input[3] = sized
    return reads


def _fresh(name: str, taken: set[str]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        candidate, index = f"{name}_{index}", index + 1
    taken.add(candidate)
    return candidate


# How a row-independence failure starts when the graph runs but its rows change each other's answers.
_ROWS_DIFFER = "the answers at "
# Operators whose result for one row depends on the other rows of the batch.
_ROW_MIXERS = frozenset({"DynamicQuantizeLinear"})


def _row_independence_failure(original: onnx.ModelProto, candidate: onnx.ModelProto, fixed: int) -> str | None:
    """None when ``candidate`` gives every row what ``original`` gives it at ``fixed`` rows, at ``fixed``, 1 and
    ``fixed + 1`` rows; otherwise why not (one line).

    The rows are all different (a repeated row would hide an operator that mixes rows, such as
    DynamicQuantizeLinear, whose scale is taken over the batch): the original answers each group of
    ``fixed`` of them at a time.
    """
    from .foreign import probe_input
    from .runtime import cpu_session, describe_runtime_error, quiet_options

    name, rows = probe_input(original, 2 * fixed)
    try:
        reference_session = cpu_session(original.SerializeToString(), quiet_options())
        parts = [reference_session.run(None, {name: rows[start:start + fixed]}) for start in (0, fixed)]
        reference = [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]
        # A graph checked against itself (a declared dynamic batch) needs no second session.
        session = reference_session if candidate is original else cpu_session(candidate.SerializeToString(),
                                                                               quiet_options())
        del reference_session
        for size in sorted({fixed, 1, fixed + 1}):
            got = session.run(None, {name: rows[:size]})
            for want, have in zip(reference, got, strict=True):
                want = want[:size]
                if have.shape != want.shape:
                    return f"at {size} rows an output is {list(have.shape)}, expected {list(want.shape)}"
                scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
                if want.size and float(np.max(np.abs(have - want))) > ROW_TOLERANCE * scale:
                    return f"{_ROWS_DIFFER}{size} rows differ from {fixed} row{'s' if fixed != 1 else ''} at a time"
    except Exception as error:  # noqa: BLE001 - a graph that does not run at that size
        return f"it does not run at another batch size ({describe_runtime_error(error)})"
    return None
