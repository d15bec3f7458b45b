"""Reads of a tensor's shape rewritten so that they do not tie distant layers together.

Two rewrites, each so a graph that looks at its input's size still splits layer by layer.

**Reads of fixed dimensions fold to constants.** Segmentation heads resize their scores back to the picture (torchvision's FCN and
DeepLab: ``F.interpolate(x, size=input.shape[-2:])``). Exported, that is
``Shape(input) -> Gather(2), Gather(3) -> Resize`` at the very end: the last operator
reads the input itself, so no single tensor separates the input from the output and
the graph has no cut. The height and width it reads are fixed (a served model takes
one image size: the manifest sizes every activation and the server validates every
request), so each such read is the constant it always gives. The batch, where it is
free, is never folded. The chain check then compares the blocks with the file as
written.

Contract of :func:`fold_fixed_shape_reads`: a ``Gather`` or ``Slice`` whose data is a ``Shape`` output and whose indices are constants becomes a ``Constant`` node of the same
output name when every dimension it selects is fixed in the typed graph; then nodes
whose outputs nothing reads (the ``Shape`` nodes left, their index constants) are
dropped. Returns the new proto and how many reads were folded.

**Reads of the free batch move to the tensor they shape.** ``b = x.shape[0]`` at the top of
``forward`` and ``x.reshape(b, -1)`` at the end (TorchScript, with a dynamic batch) is
``Shape(x) -> Gather(0) -> Unsqueeze -> Concat -> Reshape(features, ...)``: the batch is read
from the input, so every layer in between is one block. The Reshape's own data has the same
symbolic batch; :func:`rebase_batch_reads` points the ``Shape`` at it when the read only
shapes that one Reshape, and reorders the nodes. A read that shapes several tensors (one
``B`` for every stage's reshape) is copied, one per tensor shaped, each reading that tensor. The same holds for a read that only makes the
indices of a Gather (dynamo's ``as_strided`` in timm's ConvNeXt head: ``Range(0, batch)`` into a
Gather from the pooled features flattened to [-1]) or the shape of an Expand or Tile: the read moves
to the nearest tensor behind the one shaped whose first dimension is that batch.

:func:`simplified_if_same` applies both, and keeps the result only when it answers the probe
inputs exactly as the graph did.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import constant_values, topological_order


def fold_fixed_shape_reads(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``proto`` with the reads of fixed dimensions folded (module docstring), and their count."""
    graph = proto.graph
    dims = _known_params(graph)
    constants = constant_values(graph)
    shapes = {node.output[0]: _shape_of(node, dims) for node in graph.node if node.op_type == "Shape"}
    replaced: dict[int, onnx.NodeProto] = {}
    for position, node in enumerate(graph.node):
        if not node.input or node.input[0] not in shapes or shapes[node.input[0]] is None:
            continue
        selected = _selected(node, shapes[node.input[0]], constants)
        if selected is not None and all(isinstance(d, int) and d > 0 for d in selected.flat):
            replaced[position] = helper.make_node(
                "Constant", [], [node.output[0]], name=node.name or node.output[0],
                value=numpy_helper.from_array(selected.astype(np.int64), node.output[0]),
            )
    if not replaced:
        return proto, 0
    folded = onnx.ModelProto()
    folded.CopyFrom(proto)
    nodes = [replaced.get(position, node) for position, node in enumerate(folded.graph.node)]
    nodes = _live(nodes, {value.name for value in folded.graph.output})
    del folded.graph.node[:]
    folded.graph.node.extend(nodes)
    produced = {name for node in nodes for name in node.output}
    kept = [info for info in folded.graph.value_info if info.name in produced]
    del folded.graph.value_info[:]
    folded.graph.value_info.extend(kept)
    return folded, len(replaced)


def simplified_if_same(proto: onnx.ModelProto, batch_sizes: tuple[int, ...]) -> tuple[onnx.ModelProto, int, int]:
    """:func:`fold_fixed_shape_reads` then :func:`rebase_batch_reads`: (graph, reads folded, reads moved), kept
    only when the result gives every output bit for bit what ``proto`` gives on the probe input at each of
    ``batch_sizes`` (else ``proto``, 0, 0)."""
    from .foreign import run_probes

    folded, count = fold_fixed_shape_reads(proto)
    rebased, moved = rebase_batch_reads(folded)
    if not count and not moved:
        return proto, 0, 0
    for (_, want), (_, got) in zip(run_probes(proto, batch_sizes), run_probes(rebased, batch_sizes), strict=True):
        if len(want) != len(got) or not all(np.array_equal(w, g) for w, g in zip(want, got, strict=True)):
            return proto, 0, 0
    return rebased, count, moved


# Operators that carry a batch read on to the shape or indices of the tensor it shapes without reading
# any tensor themselves (Range: dynamo writes ``as_strided`` as Gather indices from Range(0, batch)).
_SHAPE_ARITHMETIC = frozenset({"Unsqueeze", "Squeeze", "Concat", "Cast", "Identity", "Mul", "Add", "Sub", "Div",
                               "Range"})
# Where such arithmetic ends: the input it feeds of the operator that reads a tensor (its first input).
_SHAPED_INPUTS = {"Reshape": 1, "Expand": 1, "Tile": 1, "Gather": 1, "GatherND": 1, "GatherElements": 1}
# How far back from that tensor a read may move, through operators whose first input carries the rows.
_MOST_STEPS_BACK = 8


def rebase_batch_reads(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``proto`` with each read of a free batch that only shapes tensors pointed at each such tensor, or the
    nearest tensor it is computed from that has the same batch first (module docstring), nodes reordered
    to run after it; and how many reads moved. A read that shapes several tensors (timm's CoaT: ``B =
    x.shape[0]`` once, a reshape at the end of every stage) is copied, one read per tensor shaped."""
    graph = proto.graph
    batch_of = {name: dims[0] for name, dims in _known_params(graph).items() if dims and isinstance(dims[0], str)}
    constants = constant_values(graph)
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))
    outputs = {value.name for value in graph.output}
    position_of = {id(node): position for position, node in enumerate(graph.node)}
    plans: list[tuple[list[int], list[tuple[int, str]]]] = []  # (the read's nodes, (shaped node, source) each)
    for position, node in enumerate(graph.node):
        if node.op_type != "Shape" or node.input[0] not in batch_of or _reads(node) is None:
            continue
        found = _tensors_shaped_by(node, readers, constants, outputs)
        if found is None:
            continue
        shaped, arithmetic = found
        sources = [_with_batch_first(target.input[0], batch_of[node.input[0]], batch_of, producers)
                   for target in shaped]
        if any(source is None for source in sources) or all(source == node.input[0] for source in sources):
            continue
        plans.append(([position, *(position_of[id(n)] for n in arithmetic)],
                      [(position_of[id(target)], source) for target, source in zip(shaped, sources, strict=True)]))
    if not plans:
        return proto, 0
    moved = onnx.ModelProto()
    moved.CopyFrom(proto)
    nodes = list(moved.graph.node)
    for read, targets in plans:
        if len(targets) == 1:
            nodes[read[0]].input[0] = targets[0][1]
            continue
        for copy, (target, source) in enumerate(targets):
            nodes.extend(_read_copy([nodes[position] for position in read], nodes[target], source, copy))
    ordered = topological_order(_live(nodes, {value.name for value in moved.graph.output}))
    del moved.graph.node[:]
    moved.graph.node.extend(ordered)
    return moved, sum(len(targets) for _, targets in plans)


def _read_copy(read: list[onnx.NodeProto], target: onnx.NodeProto, source: str, copy: int) -> list[onnx.NodeProto]:
    """The nodes of a batch read (its Shape first) copied under new names to read ``source``, and ``target``
    pointed at the copy; the original read is left to whoever else it shapes (or dropped once none does)."""
    renamed = {name: f"{name}__batch_read_{copy}" for node in read for name in node.output if name}
    copies = []
    for node in read:
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        twin.name = f"{node.name or node.output[0]}__batch_read_{copy}"
        for index, name in enumerate(twin.input):
            twin.input[index] = renamed.get(name, name)
        for index, name in enumerate(twin.output):
            twin.output[index] = renamed.get(name, name)
        copies.append(twin)
    copies[0].input[0] = source
    for index, name in enumerate(target.input):
        target.input[index] = renamed.get(name, name)
    return copies


def _reads(node: onnx.NodeProto) -> str | None:
    """What a Shape node reads: "all" dimensions, "batch" only (start 0, end 1), or None (anything else)."""
    bounds = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if not bounds:
        return "all"
    return "batch" if bounds.get("start", 0) == 0 and bounds.get("end") == 1 and set(bounds) <= {"start", "end"} else None


def _with_batch_first(name: str, batch: str, batch_of: dict[str, str],
                      producers: dict[str, onnx.NodeProto]) -> str | None:
    """``name``, or the nearest tensor it is computed from along first inputs, whose first dimension is the
    symbolic ``batch``; None within _MOST_STEPS_BACK."""
    for _ in range(_MOST_STEPS_BACK):
        if batch_of.get(name) == batch:
            return name
        node = producers.get(name)
        if node is None or not node.input:
            return None
        name = node.input[0]
    return None


def _tensors_shaped_by(shape_node: onnx.NodeProto, readers: dict[str, list[tuple[onnx.NodeProto, int]]],
                       constants: dict[str, np.ndarray], outputs: set[str]
                       ) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
    """The operators whose shape or indices input (_SHAPED_INPUTS) is all that the batch read by
    ``shape_node`` feeds, through ``Gather(0)`` (when it reads every dimension) and shape arithmetic, and
    the nodes of that read after the Shape; None when it feeds anything else."""
    shape = shape_node.output[0]
    picked = _reads(shape_node) == "batch"
    shaped: dict[int, onnx.NodeProto] = {}
    arithmetic: dict[int, onnx.NodeProto] = {}
    frontier = [shape]
    while frontier:
        name = frontier.pop()
        if name in outputs or not readers.get(name):
            return None
        for node, index in readers[name]:
            if _SHAPED_INPUTS.get(node.op_type) == index and (picked or name != shape):
                shaped[id(node)] = node
                continue
            if name == shape and not picked:
                if not (node.op_type == "Gather" and index == 0 and _picks_batch(node, constants)):
                    return None
            elif node.op_type not in _SHAPE_ARITHMETIC:
                return None
            if id(node) not in arithmetic:
                arithmetic[id(node)] = node
                frontier.extend(node.output)
    if not shaped or shaped.keys() & arithmetic.keys():
        return None
    return list(shaped.values()), list(arithmetic.values())


def _picks_batch(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> bool:
    """Whether a Gather of a shape picks its first dimension only (index 0, axis 0)."""
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    indices = constants.get(node.input[1]) if len(node.input) > 1 else None
    return axis == 0 and indices is not None and indices.size == 1 and int(indices.reshape(-1)[0]) == 0


def _known_params(graph: onnx.GraphProto) -> dict[str, list[int | str | None]]:
    """Each typed tensor's dimensions: an int where fixed, the name where symbolic, None where unknown."""
    found = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            found[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                for d in tensor.shape.dim]
    return found


def _shape_of(node: onnx.NodeProto, dims: dict[str, list[int | str | None]]) -> list[int | str | None] | None:
    """What ``Shape`` outputs, dimension by dimension (its ``start``/``end``, opset 15), None if unknown."""
    shape = dims.get(node.input[0])
    if shape is None:
        return None
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(shape)
    start, end = attributes.get("start", 0), attributes.get("end", rank)
    return shape[_clamped(start, rank) : _clamped(end, rank)]


def _clamped(index: int, rank: int) -> int:
    return min(max(index + rank if index < 0 else index, 0), rank)


def _selected(node: onnx.NodeProto, shape: list[int | str | None], constants: dict[str, np.ndarray]
              ) -> np.ndarray | None:
    """The dimensions a Gather or Slice of a shape picks (object array: an int where fixed), None when it cannot say."""
    vector = np.array(shape + [0], dtype=object)[:-1]  # 1-D of Python objects, even for one dimension
    operands = [constants.get(name) if name else None for name in node.input[1:]]
    if node.op_type == "Gather" and len(operands) == 1 and operands[0] is not None:
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        indices = operands[0].astype(np.int64)
        if axis not in (0, -1) or np.any(indices >= len(shape)) or np.any(indices < -len(shape)):
            return None
        return np.asarray(vector[indices], dtype=object)
    if node.op_type == "Slice":
        if len(node.input) == 1:  # opset 1-9: starts, ends and axes are attributes
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            operands = [np.array(attributes.get(key, default)) for key, default in
                        (("starts", []), ("ends", []), ("axes", [0]))]
        if len(operands) < 2 or any(o is None for o in operands):
            return None
        starts, ends = (o.reshape(-1) for o in operands[:2])
        axes = operands[2].reshape(-1) if len(operands) > 2 else np.array([0])
        steps = operands[3].reshape(-1) if len(operands) > 3 else np.array([1])
        if starts.size != 1 or ends.size != 1 or list(axes) not in ([0], [-1]) or list(steps) == [0]:
            return None
        # Python's slice clamps out-of-range bounds as ONNX's Slice does.
        return np.asarray(vector[slice(int(starts[0]), int(ends[0]), int(steps[0]))], dtype=object)
    return None


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` less those (transitively) whose outputs are neither read by a node kept nor graph outputs."""
    while True:
        read = outputs | {name for node in nodes for name in node.input}
        kept = [node for node in nodes if any(name in read for name in node.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept
