"""Extracting a standalone ONNX model between tensors of a larger graph.

Contract of :func:`extract`: the block computes ``outputs`` from ``inputs`` alone.
Its nodes are those the outputs are computed from, walking back until the inputs;
constants met on the way (initializers, ``Constant`` nodes and anything computed
from constants alone) are copied into the block, so a constant or an initializer
used on both sides of a cut lands in both blocks. When the walk meets a tensor that
depends on the graph input without passing through ``inputs``, the inputs do not
bound the subgraph and SplitError names those leaking tensors. The block has only
the initializers it uses, a symbolic ``batch`` first dimension on its inputs and
outputs (the fixed size when the model's batch is fixed), inferred shapes, and passes
``onnx.checker`` (with full checks wherever ONNX's shape inference covers the block's ops).

The block is built on the onnx-ir graph alone: a ``GraphView`` of the walked nodes is
cloned (fresh nodes and values, tensors shared) and serialized by onnx-ir, so no
protobuf node is ever looked up by position.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from .graph import LoadedModel, SplitError, descendants

BATCH_DIM = "batch"


def extract(
    model: LoadedModel,
    inputs: list[str],
    outputs: list[str],
    name: str,
    rename: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """A standalone model computing ``outputs`` from ``inputs``; boundary tensors renamed by ``rename``."""
    rename = rename or {}
    graph = model.graph
    boundary = [model.value(n) for n in inputs]
    targets = [model.value(n) for n in outputs]
    dependent = descendants(list(graph.inputs))
    reachable = descendants(boundary)
    nodes, leaks = _walk_back(targets, set(boundary), dependent, reachable)
    if leaks:
        listed = ", ".join(repr(v.name) for v in sorted(leaks, key=lambda v: v.name))
        raise SplitError(
            f"block {name!r}: inputs {inputs} do not bound the subgraph computing {outputs}; "
            f"also needed from outside: {listed}"
        )
    ordered = sorted(nodes, key=model.node_index.__getitem__)
    used = {v for node in ordered for v in node.inputs if v is not None and v.is_initializer()}
    view = ir.GraphView(
        boundary, targets, nodes=ordered, initializers=sorted(used, key=lambda v: v.name or ""),
        opset_imports=dict(graph.opset_imports), name=name,
    )
    block_graph = view.clone()
    for original, value in [*zip(boundary, block_graph.inputs, strict=True), *zip(targets, block_graph.outputs, strict=True)]:
        _make_boundary(value, original, rename, model.fixed_batch)
    block = ir.Model(
        block_graph,
        ir_version=model.ir_model.ir_version,
        producer_name="layerserve",
        functions=list(model.ir_model.functions.values()),
    )
    return _checked(ir.serde.serialize_model(block), name)


def _checked(block: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The block with inferred shapes, passing the checker: fully where ONNX's inference covers its ops.

    Graphs from elsewhere may hold ops whose shape inference ONNX lacks or gets wrong
    while ONNX Runtime runs them; their blocks pass the structural check, and the
    chain check on ONNX Runtime is what proves them.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(block, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(inferred, full_check=True)
        return inferred
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        pass
    try:
        onnx.checker.check_model(block)
    except onnx.checker.ValidationError as error:
        first = " ".join(str(error).split())[:300]
        raise SplitError(f"block {name!r} is not a valid ONNX model: {first}") from None
    return block


def _walk_back(
    targets: list[ir.Value], stop: set[ir.Value], dependent: set[ir.Value], reachable: set[ir.Value]
) -> tuple[set[ir.Node], set[ir.Value]]:
    nodes: set[ir.Node] = set()
    leaks: set[ir.Value] = set()
    seen: set[ir.Value] = set()
    stack = list(targets)
    while stack:
        value = stack.pop()
        if value in seen or value in stop:
            continue
        seen.add(value)
        if value in dependent and value not in reachable:
            leaks.add(value)
            continue
        node = value.producer()
        if node is None:
            if value.is_graph_input():
                leaks.add(value)
            continue  # an initializer: copied by name
        if node not in nodes:
            nodes.add(node)
            stack.extend(v for v in node.inputs if v is not None)
    return nodes, leaks


def _make_boundary(value: ir.Value, original: ir.Value, rename: dict[str, str], fixed_batch: int | None) -> None:
    """A block input/output: renamed, the first dimension ``batch`` unless the batch is fixed."""
    if original.dtype is None or original.shape is None:
        raise SplitError(f"tensor {original.name!r} has no inferred type and shape; cannot make it a block boundary")
    dims: list[int | str | None] = []
    for i, dim in enumerate(original.shape):
        if i == 0 and fixed_batch is None:
            dims.append(BATCH_DIM)
        elif isinstance(dim, int):
            dims.append(dim)
        else:
            dims.append(dim.value if isinstance(dim, ir.SymbolicDim) else None)
    value.dtype = original.dtype
    value.shape = ir.Shape(dims)
    new = rename.get(original.name, original.name)
    if new != original.name:
        value.name = new
        value.doc_string = f"tensor {original.name!r} of the full model"
