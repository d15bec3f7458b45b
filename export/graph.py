"""Loading an ONNX model for splitting, and the graph questions splitting asks.

Splitting works on one graph model: the ``onnx_ir.Model`` whose values know their
producer and their uses, which cut finding navigates and extraction clones blocks
from. The normalized ``onnx.ModelProto`` it was read from is kept only as the bytes
to write as ``model.onnx`` and to run as the chain check's reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from .errors import SplitError

_GRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)

__all__ = ["LoadedModel", "SplitError", "ancestor_nodes", "consumers", "descendants", "load_model"]


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
        found = _values_by_name(self.graph).get(name)
        if found is None:
            raise SplitError(f"the graph has no tensor named {name!r}")
        return found


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {value.name: value for value in graph.inputs}
    for node in graph:
        values.update({value.name: value for value in node.outputs if value.name})
    return values


def read_model(source: str | Path) -> onnx.ModelProto:
    """An ONNX file with its external data (read from the file's folder); SplitError for anything else."""
    path = Path(source)
    if not path.is_file():
        raise SplitError(f"{source}: no such file")
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError, ValueError, ... for garbage
        first = " ".join(str(error).split())[:200]
        raise SplitError(f"{source} is not an ONNX model ({type(error).__name__}: {first})") from None
    if not proto.graph.node:
        raise SplitError(f"{source} is not an ONNX model (no graph nodes)")
    return proto


def load_model(source: str | Path | onnx.ModelProto, make_dynamic: bool = True) -> LoadedModel:
    """Load ``source`` and bring it into the form splitting needs (see export/foreign.py, export/batch.py).

    Initializers listed as graph inputs (old exporters did this) do not count as
    inputs; old IR versions are raised; a fixed batch dimension is made dynamic
    when that provably changes nothing (``make_dynamic``), else kept and recorded;
    tensors ONNX cannot type are typed by ONNX Runtime. Raises SplitError for a file
    that is not ONNX, a graph with several inputs, a non-float input, control-flow
    nodes (If/Loop/Scan), or a graph ONNX Runtime cannot run.
    """
    from .batch import check_sizes, resolve_batch
    from .foreign import infer_types, modernize

    proto = source if isinstance(source, onnx.ModelProto) else read_model(source)
    control_flow = sorted(
        {node.op_type for node in proto.graph.node if any(a.type in _GRAPH_ATTRIBUTES for a in node.attribute)}
    )
    if control_flow:
        # Subgraphs read outer tensors implicitly; cut finding does not follow those edges.
        raise SplitError(f"the graph has control-flow nodes ({', '.join(control_flow)}); splitting them is not supported")
    proto, notes = modernize(proto)
    inputs = [value.name for value in proto.graph.input]
    if len(inputs) != 1:
        listed = ", ".join(repr(name) for name in inputs[:8]) + (", ..." if len(inputs) > 8 else "")
        raise SplitError(f"the graph has {len(inputs)} inputs ({listed}); splitting needs exactly one image input")
    resolution = resolve_batch(proto, make_dynamic)
    proto = infer_types(resolution.proto, check_sizes(resolution.fixed))
    ir_model = ir.from_proto(proto)
    node_index = {node: i for i, node in enumerate(ir_model.graph)}
    return LoadedModel(proto=proto, ir_model=ir_model, node_index=node_index, fixed_batch=resolution.fixed,
                       notes=(*notes, f"batch {resolution.note}"))


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
