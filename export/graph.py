"""Loading an ONNX model for splitting, and the graph questions splitting asks.

Splitting works on one graph model: the ``onnx_ir.Model`` whose values know their
producer and their uses, which cut finding navigates and extraction clones blocks
from. The normalized ``onnx.ModelProto`` it was read from is kept only as the bytes
to write as ``model.onnx`` and to run as the chain check's reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from .conventions import exported_size, exported_stride
from .errors import SplitError
from .model_file import read_model
from .preprocessing import image_layout

_GRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
# Said of a graph ONNX Runtime saved in its channel-blocked layout (export/cuts.py).
NCHWC_NOTE = ("ONNX Runtime's channel-blocked layout (NCHWc, saved after ORT_ENABLE_ALL) runs through the graph: it "
              "is cut only where plain NCHW; a file saved at ORT_ENABLE_EXTENDED splits finer")

__all__ = ["LoadedModel", "SplitError", "ancestor_nodes", "constant_values", "consumers", "descendants", "load_model"]


@dataclass
class LoadedModel:
    """A model ready for splitting: proto (every tensor typed) and its IR view, node-aligned.

    ``fixed_batch`` is None when the graph takes any batch size, else the only one it
    takes; ``notes`` say what loading changed (IR version, batch dimension).
    """

    proto: onnx.ModelProto
    ir_model: ir.Model
    node_index: dict[ir.Node, int]
    fixed_batch: int | None = None
    notes: tuple[str, ...] = ()
    # The rows of a request change each other's answers (export/batch.py): requests must not be merged.
    rows_interact: bool = False
    # False: the input has no batch dimension, each request one sample as it is (export/batch.py).
    batched: bool = True

    @property
    def graph(self) -> ir.Graph:
        return self.ir_model.graph

    @property
    def input(self) -> ir.Value:
        """The one image input (``load_model`` refuses models with several)."""
        return self.graph.inputs[0]

    @property
    def check_sizes(self) -> tuple[int, ...]:
        """Batch sizes the chain check runs at: two for a dynamic batch, the fixed one otherwise."""
        from .batch import check_sizes

        return check_sizes(self.fixed_batch)

    def value(self, name: str) -> ir.Value:
        """The value called ``name``; SplitError when the graph has none."""
        values = _values_by_name(self.graph)
        found = values.get(name)
        if found is None:
            raise SplitError(f"the graph has no tensor named {name[:120]!r}{_similar(name, list(values))}")
        return found


def _similar(name: str, names: list[str]) -> str:
    """"; tensors whose names contain it: ..." (exporters prefix and suffix layer names: tf2onnx writes
    ``model/block_13_expand_relu/Relu6:0`` for ``block_13_expand_relu``), at most three, else ""."""
    wanted = name.lower()
    found = [candidate for candidate in names if wanted and wanted in candidate.lower()]
    if not found:
        return ""
    shown = ", ".join(repr(candidate[:120]) for candidate in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"; tensors whose names contain it: {shown}{more}"


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {value.name: value for value in graph.inputs}
    for node in graph:
        values.update({value.name: value for value in node.outputs if value.name})
    return values


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The value of every tensor the graph fixes, by name: its initializers, its ``Constant`` nodes'
    ``value``, and small shape arithmetic on those (:data:`SHAPE_ARITHMETIC`: a TorchScript export without
    constant folding builds ``x.view(1, -1)``'s target as ``Concat(Unsqueeze(1), Unsqueeze(-1))``). These are
    the operands that batch rewriting and shape-read folding need to know."""
    arrays: dict[str, np.ndarray] = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        if node.op_type == "Constant":
            value = constant_attribute(node)
            if value is not None:
                arrays[node.output[0]] = value
        elif (node.op_type in SHAPE_ARITHMETIC and node.input
              and all(name in arrays and arrays[name].size <= SHAPE_ELEMENTS for name in node.input if name)):
            value = _shape_arithmetic(node, [arrays[name] if name else None for name in node.input])
            if value is not None:
                arrays[node.output[0]] = value
    return arrays


def constant_attribute(node: onnx.NodeProto) -> np.ndarray | None:
    """A ``Constant`` node's value: its ``value`` tensor, or ``value_ints``/``value_int``/``value_floats``/
    ``value_float`` (the dynamo exporter writes shapes as ``value_ints``)."""
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_ints", "value_int"):
            return np.array(onnx.helper.get_attribute_value(attribute), dtype=np.int64)
        if attribute.name in ("value_floats", "value_float"):
            return np.array(onnx.helper.get_attribute_value(attribute), dtype=np.float32)
    return None


SHAPE_ARITHMETIC = frozenset({"Unsqueeze", "Squeeze", "Concat", "Identity", "Cast"})
# Operands larger than this are not shapes: weights are never computed here.
SHAPE_ELEMENTS = 64


def _shape_arithmetic(node: onnx.NodeProto, operands: list[np.ndarray | None]) -> np.ndarray | None:
    """What ``node`` (one of SHAPE_ARITHMETIC) gives for constant ``operands``; None when unsure."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    first = operands[0]
    if first is None:
        return None
    if node.op_type == "Identity":
        return first
    if node.op_type == "Cast":
        return first.astype(onnx.helper.tensor_dtype_to_np_dtype(attributes["to"]))
    if node.op_type == "Concat":
        if any(operand is None for operand in operands):
            return None
        return np.concatenate(operands, axis=int(attributes.get("axis", 0)))
    axes = attributes.get("axes")
    if axes is None and len(operands) > 1 and operands[1] is not None:
        axes = operands[1].tolist()
    if node.op_type == "Squeeze":
        if axes is None:
            return np.squeeze(first)
        return np.squeeze(first, axis=tuple(int(a) % first.ndim for a in axes))
    if axes is None:
        return None
    rank = first.ndim + len(axes)
    result = first
    for axis in sorted(int(a) % rank for a in axes):
        result = np.expand_dims(result, axis)
    return result


def training_mode_nodes(proto: onnx.ModelProto) -> str:
    """``BatchNormalization with training_mode=1, Dropout with training_mode true`` for the nodes of ``proto`` that
    compute as in training, or "": batch statistics make a row's answer depend on the rows beside it, and an
    active Dropout makes it random."""
    flags = [node for node in proto.graph.node if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]]
    constants = constant_values(proto.graph) if flags else {}  # every weight as an array: only when asked
    found = []
    for node in proto.graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "BatchNormalization" and attributes.get("training_mode") == 1:
            found.append("BatchNormalization with training_mode=1")
        elif (node.op_type == "Dropout" and len(node.input) > 2 and node.input[2] in constants
              and bool(np.asarray(constants[node.input[2]]).reshape(-1)[0])):
            found.append("Dropout with training_mode true")
    return ", ".join(dict.fromkeys(found))


def _weights_as_inputs(proto: onnx.ModelProto) -> list[str]:
    """The graph inputs that a layer reads as its weights or bias (past its first input), with no initializer."""
    from .layers import WEIGHTED_OPS

    inputs = {value.name for value in proto.graph.input} - {tensor.name for tensor in proto.graph.initializer}
    found: list[str] = []
    for node in proto.graph.node:
        if node.op_type in WEIGHTED_OPS | {"BatchNormalization"}:
            found.extend(name for name in node.input[1:] if name in inputs and name not in found)
    return found


def _one_picture(info: onnx.ValueInfoProto) -> bool:
    """Whether ``info`` reads as a single picture [H, W, C]: three dimensions, height and width free, 1 to 4
    channels last (onnxruntime-extensions' pre-processing takes one picture like this)."""
    dims = list(info.type.tensor_type.shape.dim)
    return (len(dims) == 3 and not any(d.HasField("dim_value") for d in dims[:2])
            and dims[2].HasField("dim_value") and 1 <= dims[2].dim_value <= 4)


def pin_input_shape(proto: onnx.ModelProto, per_sample: tuple[int, ...] | None) -> onnx.ModelProto:
    """``proto`` with its input's free dimensions past the batch set from ``per_sample``.

    A served model takes one image size: its manifest sizes every block's activations per sample,
    and the server validates requests against them. A graph exported with free height and width
    (``dynamic_axes={"x": {2: "h", 3: "w"}}``) is split at the size the user names. Raises SplitError
    when a free dimension is left without a size, or ``per_sample`` disagrees with the graph.
    """
    info = proto.graph.input[0]
    past_batch = list(info.type.tensor_type.shape.dim)[1:]
    shown = "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                            for d in info.type.tensor_type.shape.dim) + "]"
    free = [not d.HasField("dim_value") for d in past_batch]
    if per_sample is None:
        if any(free):
            unbatched = (f"; if {shown} is one picture with no batch dimension, as onnxruntime-extensions' "
                         "pre-processing takes, split the model before that pre-processing: a served model takes "
                         "batches" if _one_picture(info) else "")
            raise SplitError(f"input {info.name!r} is {shown}: free dimensions past the batch; a served model takes "
                             f"one image size, so name it with --input-shape (e.g. --input-shape "
                             f"{_example_shape(past_batch, exported_size(proto))}){unbatched}")
        return proto
    stride, layout = exported_stride(proto), image_layout(per_sample)
    if stride and layout is not None and any(size % stride for size in layout[1:]):
        raise SplitError(f"--input-shape {','.join(map(str, per_sample))}: the graph's metadata says stride {stride}, "
                         f"so height and width must be multiples of {stride} (e.g. --input-shape "
                         f"{_example_shape(past_batch, exported_size(proto))})")
    if len(per_sample) != len(past_batch) or any(
        d.HasField("dim_value") and d.dim_value != size for d, size in zip(past_batch, per_sample, strict=False)
    ):
        wanted = ",".join(str(size) for size in per_sample)
        raise SplitError(f"--input-shape {wanted} does not fit input {info.name!r}, which is {shown} (the batch first)")
    if not any(free):
        return proto
    pinned = onnx.ModelProto()
    pinned.CopyFrom(proto)
    for dim, size in zip(list(pinned.graph.input[0].type.tensor_type.shape.dim)[1:], per_sample, strict=True):
        dim.Clear()
        dim.dim_value = size
    # Shapes recorded for another size would contradict the pinned one: inference gives them again. That
    # includes fixed output sizes, which exporters write for their own example input (optimum wrote a
    # ResNet's [batch, 256, 2, 2] at 64x64 into a graph with free height and width).
    del pinned.graph.value_info[:]
    for output in pinned.graph.output:
        for dim in list(output.type.tensor_type.shape.dim)[1:]:
            dim.Clear()
    return pinned


def _recorded_shape(proto: onnx.ModelProto) -> tuple[int, int, int] | None:
    """The per-sample shape [C, H, W] for an input whose height and width are free and whose channels are fixed,
    from the size its exporter recorded (export/conventions.py); None when anything else is free or unknown."""
    dims = list(proto.graph.input[0].type.tensor_type.shape.dim)[1:]
    size = exported_size(proto)
    if size is None or len(dims) != 3 or not dims[0].HasField("dim_value") or dims[0].dim_value not in (1, 3):
        return None
    if any(d.HasField("dim_value") for d in dims[1:]):
        return None
    return (int(dims[0].dim_value), *size)


def _example_shape(past_batch: list, size: tuple[int, int] | None = None) -> str:
    """A per-sample shape to suggest for free dimensions: 3 channels first for an NCHW image (unless the
    last dimension is a fixed channel count, channels last), the exporter's recorded ``size`` for height and
    width (export/conventions.py), else 224."""
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in past_batch]
    channels_last = len(fixed) == 3 and fixed[-1] is not None and fixed[-1] <= 4
    spatial = iter(size or (224, 224))
    return ",".join(str(dim) if dim is not None else "3" if position == 0 and len(fixed) == 3 and not channels_last
                    else str(next(spatial, 224)) for position, dim in enumerate(fixed))


def topological_order(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after what it reads, as close to the given order as that allows
    (ONNX requires that order; some old converters wrote nodes out of it, and ONNX Runtime sorts them itself)."""
    import heapq

    producer = {name: index for index, node in enumerate(nodes) for name in node.output}
    waiting = [sum(1 for name in set(node.input) if name and name in producer) for node in nodes]
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in set(node.input):
            if name and name in producer:
                readers.setdefault(producer[name], []).append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(nodes[index])
        for reader in readers.get(index, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(ordered) != len(nodes):  # a cycle: cannot be, but never lose a node
        return nodes
    return ordered


def load_model(
    source: str | Path | onnx.ModelProto, make_dynamic: bool = True, input_shape: tuple[int, ...] | None = None
) -> LoadedModel:
    """Load ``source`` and bring it into the form splitting needs (see export/foreign.py, export/batch.py).

    Initializers listed as graph inputs (old exporters did this) do not count as
    inputs; old IR versions are raised; a fixed batch dimension is made dynamic
    when that provably changes nothing (``make_dynamic``), else kept and recorded;
    tensors ONNX cannot type are typed by ONNX Runtime; reads of fixed dimensions are folded to
    constants and reads of the batch moved next to what they shape (export/shape_reads.py). Raises SplitError for a file
    that is not ONNX, a graph with several inputs, an input that is not a picture, control-flow
    nodes (If/Loop/Scan), a graph ONNX Runtime cannot run, or an input with free dimensions past
    the batch that ``input_shape`` (the per-sample shape) does not pin (:func:`pin_input_shape`).
    """
    from .batch import check_sizes, resolve_batch
    from .foreign import infer_types, modernize
    from .shape_reads import simplified_if_same

    proto = source if isinstance(source, onnx.ModelProto) else read_model(source)
    control_flow = sorted(
        {node.op_type for node in proto.graph.node if any(a.type in _GRAPH_ATTRIBUTES for a in node.attribute)}
    )
    if control_flow:
        # Subgraphs read outer tensors implicitly; cut finding does not follow those edges.
        raise SplitError(f"the graph has control-flow nodes ({', '.join(control_flow)}); splitting them is not supported")
    proto, notes = modernize(proto)
    training = training_mode_nodes(proto)
    if training:
        raise SplitError(f"the graph was exported in training mode ({training}): its answers are random or depend on "
                         "the other rows of the batch; export with model.eval() and torch.onnx.export's default "
                         "training=TrainingMode.EVAL")
    ordered = topological_order(list(proto.graph.node))
    if any(a is not b for a, b in zip(ordered, proto.graph.node, strict=True)):
        sorted_proto = onnx.ModelProto()
        sorted_proto.CopyFrom(proto)
        del sorted_proto.graph.node[:]
        sorted_proto.graph.node.extend(ordered)
        proto = sorted_proto
        notes.append("nodes put in topological order (the file lists some before the tensors they read)")
    if any(node.domain == "com.microsoft.nchwc" for node in proto.graph.node):
        notes.append(NCHWC_NOTE)
    inputs = [value.name for value in proto.graph.input]
    if len(inputs) != 1:
        listed = ", ".join(repr(name) for name in inputs[:8]) + (", ..." if len(inputs) > 8 else "")
        weights = _weights_as_inputs(proto)
        because = (f": {len(weights)} of them are layer weights without values (torch.onnx.export(..., "
                   "export_params=False) leaves them so); export with the weights, export_params=True, the default"
                   if weights and len(weights) == len(inputs) - 1 else
                   "; splitting needs exactly one image input (the server still serves such a graph whole from a "
                   "Triton model repository: <model>/config.pbtxt beside <model>/1/model.onnx)")
        raise SplitError(f"the graph has {len(inputs)} inputs ({listed}){because}")
    if input_shape is None:
        input_shape = _recorded_shape(proto)
        if input_shape is not None:
            notes.append(f"free height and width pinned to the size the exporter recorded ({input_shape[1]}x"
                         f"{input_shape[2]}, Ultralytics' imgsz); --input-shape picks another")
    proto = pin_input_shape(proto, input_shape)
    resolution = resolve_batch(proto, make_dynamic)
    proto = infer_types(resolution.proto, check_sizes(resolution.fixed))
    proto, folded, moved = simplified_if_same(proto, check_sizes(resolution.fixed))
    if folded:
        notes.append(f"{folded} read{'s' if folded != 1 else ''} of fixed dimensions (Shape then Gather or Slice) "
                     "folded to constants")
    if moved:
        notes.append("1 read of the batch moved next to the tensor it shapes" if moved == 1 else
                     f"{moved} reads of the batch moved next to the tensors they shape")
    ir_model = ir.from_proto(proto)
    node_index = {node: i for i, node in enumerate(ir_model.graph)}
    return LoadedModel(proto=proto, ir_model=ir_model, node_index=node_index, fixed_batch=resolution.fixed,
                       notes=(*notes, f"batch {resolution.note}"), rows_interact=resolution.rows_interact,
                       batched=resolution.batched)


def consumers(value: ir.Value) -> list[ir.Node]:
    """Distinct nodes that read ``value``."""
    seen: dict[ir.Node, None] = {}
    for usage in value.uses():
        seen.setdefault(usage.node, None)
    return list(seen)


def descendants(values: list[ir.Value]) -> set[ir.Value]:
    """Every value computed (transitively) from ``values``, including them."""
    found: set[ir.Value] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        if value in found:
            continue
        found.add(value)
        for node in consumers(value):
            stack.extend(node.outputs)
    return found


def ancestor_nodes(value: ir.Value, stop: set[ir.Value]) -> set[ir.Node]:
    """Nodes ``value`` is computed from, walking producers back and stopping at ``stop``."""
    found: set[ir.Node] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        node = current.producer()
        if current in stop or node is None or node in found:
            continue
        found.add(node)
        stack.extend(v for v in node.inputs if v is not None)
    return found
