"""Loading an ONNX model for splitting, and the graph questions splitting asks.

A model is held twice: the ``onnx.ModelProto`` (with inferred shapes) that blocks are
copied from, and an ``onnx_ir.Model`` view of the same graph whose values know their
producer and their uses, which the cut finding and extraction navigate. Node
``i`` of the IR graph is node ``i`` of the proto graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

_GRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


class SplitError(ValueError):
    """A model cannot be split as asked; the message says why, naming the tensors involved."""


@dataclass
class LoadedModel:
    """A model ready for splitting: proto (shapes inferred) and its IR view, node-aligned."""

    proto: onnx.ModelProto
    ir_model: ir.Model
    node_index: dict[ir.Node, int]

    @property
    def graph(self) -> ir.Graph:
        return self.ir_model.graph

    @property
    def input(self) -> ir.Value:
        """The one image input (``load_model`` refuses models with several)."""
        return self.graph.inputs[0]

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


def load_model(source: str | Path | onnx.ModelProto) -> LoadedModel:
    """Load ``source``, infer shapes, and check it has exactly one graph input.

    Initializers listed as graph inputs (old exporters did this) do not count as
    inputs. Raises SplitError for a file that is not ONNX, a graph with several inputs,
    or control-flow nodes (If/Loop/Scan).
    """
    if isinstance(source, onnx.ModelProto):
        proto = source
    else:
        try:
            proto = onnx.load(str(source))
        except Exception as error:  # onnx raises DecodeError, ValueError, ... for garbage
            raise SplitError(f"{source} is not an ONNX model ({type(error).__name__}: {error})") from None
        if not proto.graph.node:
            raise SplitError(f"{source} is not an ONNX model (no graph nodes)")
    proto = _drop_initializer_inputs(proto)
    control_flow = sorted(
        {node.op_type for node in proto.graph.node if any(a.type in _GRAPH_ATTRIBUTES for a in node.attribute)}
    )
    if control_flow:
        # Subgraphs read outer tensors implicitly; cut finding does not follow those edges.
        raise SplitError(f"the graph has control-flow nodes ({', '.join(control_flow)}); splitting them is not supported")
    inputs = [value.name for value in proto.graph.input]
    if len(inputs) != 1:
        raise SplitError(f"the graph has {len(inputs)} inputs ({', '.join(inputs)}); splitting needs exactly one image input")
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    ir_model = ir.from_proto(proto)
    node_index = {node: i for i, node in enumerate(ir_model.graph)}
    return LoadedModel(proto=proto, ir_model=ir_model, node_index=node_index)


def _drop_initializer_inputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    initializers = {tensor.name for tensor in proto.graph.initializer}
    if not any(value.name in initializers for value in proto.graph.input):
        return proto
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    keep = [value for value in proto.graph.input if value.name not in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    return proto


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
