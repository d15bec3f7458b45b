"""Single-tensor cut points: tensors that every path from the input to the output passes through.

Only *input-dependent* tensors count: constants, initializers and whatever is
computed from them alone can be copied into every block that needs them, so they
never stop a cut. In a topologically ordered graph, tensor ``t`` (produced by node
``i``) is a single-tensor cut exactly when, right after node ``i``, ``t`` is the
only input-dependent tensor still waiting for a consumer (or being a graph output).
Any other waiting tensor would be a path around ``t``.

A graph ONNX Runtime saved after its layout optimization (``ORT_ENABLE_ALL``) holds tensors in a
channel-blocked layout (NCHWc: channels padded and interleaved) between ``ReorderInput`` and
``ReorderOutput`` (domain ``com.microsoft.nchwc``). Typed as plain NCHW, such a tensor would be
served under a shape it does not have, so it is never a cut: the graph is cut where it is plain.

A QDQ-quantized graph (``quantize_static`` in the QDQ format) is cut at the quantized tensor between a
``QuantizeLinear`` and its ``DequantizeLinear``, not at the float tensor after them
(:func:`on_quantized_side`): ONNX Runtime runs ``DequantizeLinear -> Conv -> QuantizeLinear`` as one integer
operator, and a cut inside that pattern made the next block run the float Conv instead.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from .graph import LoadedModel, SplitError, ancestor_nodes, consumers, descendants


def single_tensor_cuts(model: LoadedModel) -> list[ir.Value]:
    """Every single-tensor cut in graph order, excluding the graph input and the graph outputs."""
    graph = model.graph
    dependent = descendants(list(graph.inputs))
    last_use: dict[ir.Value, float] = {}
    for value in dependent:
        readers = consumers(value)
        last_use[value] = max((model.node_index[node] for node in readers), default=-1)
        if value.is_graph_output():
            last_use[value] = math.inf
    live: set[ir.Value] = {value for value in graph.inputs if last_use.get(value, -1) >= 0}
    cuts: list[ir.Value] = []
    for i, node in enumerate(graph):
        live.update(v for v in node.outputs if v in dependent and last_use[v] > i)
        live.difference_update([v for v in list(live) if last_use[v] <= i])
        if len(live) == 1:
            (only,) = live
            if only.producer() is node and not only.is_graph_output() and not channel_blocked(only):
                cuts.append(only)
    return cuts


NCHWC_DOMAIN = "com.microsoft.nchwc"


def channel_blocked(value: ir.Value) -> bool:
    """Whether ``value`` is in ONNX Runtime's NCHWc layout: made by an NCHWc operator other than ReorderOutput."""
    producer = value.producer()
    return producer is not None and producer.domain == NCHWC_DOMAIN and producer.op_type != "ReorderOutput"


QUANTIZE_DOMAINS = ("", "ai.onnx", "com.microsoft")


def on_quantized_side(cuts: list[ir.Value], single: set[ir.Value]) -> list[ir.Value]:
    """``cuts`` with each one on the float side of a ``QuantizeLinear -> DequantizeLinear`` pair moved to the
    quantized tensor between them, where that is a cut too (in ``single``): the float tensor a
    ``QuantizeLinear`` alone reads, or the float tensor a ``DequantizeLinear`` makes of it.

    ONNX Runtime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into one integer operator (QLinearConv).
    A block ending or starting inside that pattern runs the Conv in float instead: on a CPU without VNNI,
    whose integer kernels saturate, such a chain differed from the full graph by 10 % of the output's scale.
    At the quantized tensor every block holds whole patterns, and a quarter of the bytes cross."""
    moved: list[ir.Value] = []
    for cut in cuts:
        quantized = _quantized_twin(cut)
        cut = quantized if quantized is not None and quantized in single else cut
        if cut not in moved:
            moved.append(cut)
    return moved


def _quantized_twin(value: ir.Value) -> ir.Value | None:
    """The quantized tensor ``value`` is the float side of: the output of the ``QuantizeLinear`` that alone
    reads it, or the input of the ``DequantizeLinear`` that makes it, when a ``QuantizeLinear`` made that."""
    readers = list(consumers(value))
    if len(readers) == 1 and _is(readers[0], "QuantizeLinear") and not value.is_graph_output():
        return readers[0].outputs[0]
    producer = value.producer()
    if producer is not None and _is(producer, "DequantizeLinear"):
        quantized = producer.inputs[0]
        source = quantized.producer() if quantized is not None else None
        if source is not None and _is(source, "QuantizeLinear") and len(list(consumers(quantized))) == 1:
            return quantized
    return None


def _is(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in QUANTIZE_DOMAINS


def crossing_tensors(model: LoadedModel, value: ir.Value) -> list[str]:
    """Input-dependent tensors other than ``value`` that cross a cut made right after ``value``.

    The "before" side is everything ``value`` is computed from; a tensor crosses when
    it is produced on that side (or is the graph input) and read on the other side,
    or is a graph output. An empty list means ``value`` is a single-tensor cut.
    """
    graph = model.graph
    dependent = descendants(list(graph.inputs))
    if value not in dependent:
        raise SplitError(f"tensor {value.name!r} does not depend on the graph input (a constant); it cannot be a cut")
    before = ancestor_nodes(value, stop=set())
    produced = list(graph.inputs) + [v for node in before for v in node.outputs]
    crossing = []
    for candidate in produced:
        if candidate is value or candidate not in dependent:
            continue
        if candidate.is_graph_output() or any(node not in before for node in consumers(candidate)):
            crossing.append(candidate)
    crossing.sort(key=lambda v: -1 if v.producer() is None else model.node_index[v.producer()])
    return [v.name for v in crossing]


def require_cuts(model: LoadedModel, names: list[str]) -> list[ir.Value]:
    """The named tensors as cuts in graph order; SplitError naming the tensors that cross a non-cut."""
    values = [model.value(name) for name in names]
    for value in values:
        if value in model.graph.inputs or value.is_graph_output():
            raise SplitError(f"tensor {value.name!r} is a graph input or output; cut at the tensors between them")
        if channel_blocked(value):
            raise SplitError(f"tensor {value.name!r} is in ONNX Runtime's channel-blocked layout (NCHWc, made by "
                             f"{value.producer().op_type}); cut where the graph is plain NCHW, or split the graph "
                             "saved before ONNX Runtime's layout optimization")
        others = crossing_tensors(model, value)
        if others:
            listed = ", ".join(repr(name) for name in others)
            raise SplitError(
                f"tensor {value.name!r} is not a single-tensor cut: {listed} also cross{'es' if len(others) == 1 else ''} it"
            )
    return sorted(set(values), key=lambda v: model.node_index[v.producer()])
