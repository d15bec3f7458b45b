"""Reads of fixed dimensions folded to constants, so a graph that looks at its input's size splits.

Segmentation heads resize their scores back to the picture (torchvision's FCN and
DeepLab: ``F.interpolate(x, size=input.shape[-2:])``). Exported, that is
``Shape(input) -> Gather(2), Gather(3) -> Resize`` at the very end: the last operator
reads the input itself, so no single tensor separates the input from the output and
the graph has no cut. The height and width it reads are fixed (a served model takes
one image size: the manifest sizes every activation and the server validates every
request), so each such read is the constant it always gives. The batch, where it is
free, is never folded. The chain check then compares the blocks with the file as
written.

Contract of :func:`fold_fixed_shape_reads`: a ``Gather`` or ``Slice`` whose data is a
``Shape`` output and whose indices are constants becomes a ``Constant`` node of the same
output name when every dimension it selects is fixed in the typed graph; then nodes
whose outputs nothing reads (the ``Shape`` nodes left, their index constants) are
dropped. Returns the new proto and how many reads were folded. :func:`folded_if_same`
keeps the folded graph only when it answers the probe inputs exactly as the graph did.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def fold_fixed_shape_reads(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``proto`` with the reads of fixed dimensions folded (module docstring), and their count."""
    graph = proto.graph
    dims = _known_dims(graph)
    constants = _constants(graph)
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


def folded_if_same(proto: onnx.ModelProto, batch_sizes: tuple[int, ...]) -> tuple[onnx.ModelProto, int]:
    """:func:`fold_fixed_shape_reads`, kept only when the folded graph gives every output bit for bit what
    ``proto`` gives on the probe input at each of ``batch_sizes`` (else ``proto`` and 0)."""
    from .foreign import run_probe

    folded, count = fold_fixed_shape_reads(proto)
    if not count:
        return proto, 0
    for batch in batch_sizes:
        _, want = run_probe(proto, batch)
        _, got = run_probe(folded, batch)
        if len(want) != len(got) or not all(np.array_equal(w, g) for w, g in zip(want, got, strict=True)):
            return proto, 0
    return folded, count


def _known_dims(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    """Each typed tensor's dimensions: an int where fixed, None where symbolic or unknown."""
    found = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            found[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return found


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' values by tensor name (the index operands folding needs)."""
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value.t)
    return values


def _shape_of(node: onnx.NodeProto, dims: dict[str, list[int | None]]) -> list[int | None] | None:
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


def _selected(node: onnx.NodeProto, shape: list[int | None], constants: dict[str, np.ndarray]) -> np.ndarray | None:
    """The dimensions a Gather or Slice of a shape picks (object array of int/None), None when it cannot say."""
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
