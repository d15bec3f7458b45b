"""Splitting a model into an ordered chain of blocks at single-tensor cuts.

Granularities:

* ``layer`` (default): one block per module at ``depth`` of the model's module tree
  (``stem``, ``layer1``, ..., ``fc``; export/naming.py says how the automatic depth
  opens containers such as ``features``) when the exporter recorded scopes; without
  scopes, one block per weighted layer (a Conv/Gemm/MatMul with the ops that follow
  it up to the next one).
* ``cut``: a block between every pair of consecutive single-tensor cuts (in a QDQ graph, at the quantized
  tensor of each QuantizeLinear/DequantizeLinear pair: export/cuts.py).
* ``at``: cut exactly at the named tensors (refused, naming the crossing tensors,
  when one is not a single-tensor cut).

Block ``i`` reads the previous block's output. The graph input keeps its name for
block 0 and the graph outputs keep theirs for the last block; the tensor at each cut
is renamed ``<block name>_out`` (``00_stem_out``) after the block producing it, so
names are readable and stable across re-exports (the original name is kept in the
tensor's doc_string).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir

from .cuts import on_quantized_side, require_cuts, single_tensor_cuts
from .extract import extract
from .graph import LoadedModel, SplitError, descendants
from .layers import WEIGHTED_OPS
from .naming import block_label, block_name, layer_names, scope_labels

GRANULARITIES = ("layer", "cut", "at")


@dataclass(frozen=True)
class BlockModel:
    """One block: its ONNX model, the names its I/O has in the block and in the full graph."""

    index: int
    name: str
    proto: onnx.ModelProto
    inputs: list[str]
    outputs: list[str]
    source_inputs: list[str]
    source_outputs: list[str]
    first_node: str
    last_node: str


@dataclass(frozen=True)
class SplitResult:
    """The ordered blocks and the cut tensors (full-graph names) between them."""

    blocks: list[BlockModel]
    cuts: list[str]
    granularity: str


def plan_cuts(
    model: LoadedModel, granularity: str = "layer", at: list[str] | None = None, depth: int | None = None
) -> list[ir.Value]:
    """The cut tensors for ``granularity`` in graph order (SplitError for an unknown granularity or bad ``at``).

    ``depth``: which level of the module tree makes a ``layer`` block (None: automatic).
    """
    if at:
        return require_cuts(model, at)
    if granularity not in ("layer", "cut"):
        raise SplitError(f"unknown granularity {granularity!r} (use one of {', '.join(GRANULARITIES)})")
    if depth is not None and depth < 1:
        raise SplitError(f"depth must be 1 (top-level modules) or more, or auto; got {depth}")
    every = single_tensor_cuts(model)
    cuts = on_quantized_side(every, set(every))
    if granularity == "cut" or not cuts:
        return cuts
    segments = _segments(model, cuts)
    scopes = scope_labels(list(model.graph), depth)
    layers = [node for node in model.graph if node.op_type in WEIGHTED_OPS]
    scoped = sum(1 for node in layers if scopes[node])
    # Scopes on a few layers only (a tool renamed the rest) would make the unscoped ones one block.
    if 2 * scoped > len(layers) or (not layers and any(scopes.values())):
        labels = _segment_labels(segments, scopes)
        return [cut for i, cut in enumerate(cuts) if labels[i] != labels[i + 1]]
    # No scopes: close a block before each weighted op once the block holds one, so each block holds one
    # layer and what comes before the first (tf2onnx's NHWC-to-NCHW Transpose) joins it rather than making
    # a block of its own (a hop for nothing); a graph without weighted ops falls back to every cut.
    weighted = [any(n.op_type in WEIGHTED_OPS for n in segment) for segment in segments]
    per_layer, holds_one = [], weighted[0]
    for i, cut in enumerate(cuts):
        if weighted[i + 1] and holds_one:
            per_layer.append(cut)
        holds_one = holds_one or weighted[i + 1]
    return per_layer or cuts


def _segments(model: LoadedModel, cuts: list[ir.Value]) -> list[list[ir.Node]]:
    """Input-dependent nodes between consecutive cuts (and after the last one), in graph order."""
    dependent = descendants(list(model.graph.inputs))
    bounds = [model.node_index[cut.producer()] for cut in cuts]
    nodes = list(model.graph)
    segments, start = [], 0
    for end in [*bounds, len(nodes) - 1]:
        segment = [n for n in nodes[start : end + 1] if any(v in dependent for v in n.outputs)]
        segments.append(segment)
        start = end + 1
    return segments


def _segment_labels(segments: list[list[ir.Node]], scopes: dict[ir.Node, str | None]) -> list[str | None]:
    """Each segment's scope (its last scoped node's); unscoped segments inherit the previous one."""
    labels: list[str | None] = []
    for segment in segments:
        scope = next((scopes[n] for n in reversed(segment) if scopes[n]), None)
        labels.append(scope if scope is not None else (labels[-1] if labels else None))
    return labels


def split(
    model: LoadedModel, granularity: str = "layer", at: list[str] | None = None, depth: int | None = None
) -> SplitResult:
    """Split ``model`` into standalone blocks whose chain computes the full graph."""
    cuts = plan_cuts(model, granularity, at, depth)
    if not cuts and granularity != "cut":
        raise SplitError("the graph has no single-tensor cut between its input and its output")
    graph_input = model.input.name
    graph_outputs = [v.name for v in model.graph.outputs]
    segments = _segments(model, cuts)
    taken = {v.name for node in model.graph for v in node.outputs} | {graph_input}
    labels = scope_labels(list(model.graph), depth) if granularity == "layer" else None
    layers = layer_names(list(model.graph))
    names = [block_name(i, block_label(segment, labels, layers)) for i, segment in enumerate(segments)]
    bounds = [[graph_input], *[[cut.name] for cut in cuts], graph_outputs]
    rename = {}
    for i, cut in enumerate(cuts):
        new = f"{names[i]}_out"
        rename[cut.name] = new if new not in taken else cut.name
    blocks = []
    for i, name in enumerate(names):
        proto = extract(model, bounds[i], bounds[i + 1], name, rename)
        blocks.append(
            BlockModel(
                index=i,
                name=name,
                proto=proto,
                inputs=[rename.get(n, n) for n in bounds[i]],
                outputs=[rename.get(n, n) for n in bounds[i + 1]],
                source_inputs=list(bounds[i]),
                source_outputs=list(bounds[i + 1]),
                first_node=segments[i][0].name or segments[i][0].op_type if segments[i] else "",
                last_node=segments[i][-1].name or segments[i][-1].op_type if segments[i] else "",
            )
        )
    return SplitResult(blocks=blocks, cuts=[cut.name for cut in cuts], granularity="at" if at else granularity)
