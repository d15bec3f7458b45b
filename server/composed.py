"""A whole chain as one graph: the blocks' optimized graphs composed, so the chain is one ONNX Runtime run.

A chain of N blocks makes N ``Run`` calls where the full graph makes one. Each call has a fixed
cost (binding, the executor's set-up, caches the gRPC work between requests has cooled), and at
batch 1 on a small CNN that cost was what a served chain took over the full graph: digits_cnn's
5-block chain ran 1.10-1.16x the full graph's p50 with every block bound in advance
(docs/BENCHMARKS.md, "Issue 12, seventh pass"). Composed, the chain runs the very graphs its
blocks run (native-seam variants included, server/seams.py), in order, in one call.

Composing concatenates the graphs' nodes. The tensors at the seams keep their names, which is how
one block's output reaches the next, as in ``runtime.chain``. Every other name gets a prefix per
block: ONNX Runtime names what its optimizer adds per graph, so two blocks may both hold a
``reorder_token_3``. Weights stay external and point at the copies' own files, so a composed graph
adds a session, not weights: its initializers map the pages the blocks' sessions map.

A composed graph maps the blocks' weights, but one more session is not free: ONNX Runtime's CPU
kernels for fully connected layers (Gemm, MatMul) and quantized ones pack their constant weights
into a copy of their own, per session. ``packable_bytes`` estimates that copy from the graph alone, so
every worker comes to the same answer: ResNet-50's classifier, 7.8 MiB counted and 8.7 MiB measured;
a VGG-style classifier, 276 MiB counted and 274 MiB measured (docs/BENCHMARKS.md, "Issue 12: which
chains to compose").

server/chains.py composes the chain of every block, with nothing kept, once at load, and uses it
only when its answers on the probe input are bit-identical to the plain chain's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import message

from .onnx_fields import Model, save

# The most a session beside a graph's own may pack of weights (packable_bytes), in every worker: the
# composed chain (server/chains.py) and a graph's session on every core (server/runtime.py) are made only
# under it. A VGG-style classifier would cost 276 MiB per worker, ResNet-50's costs 8.7. docs/BENCHMARKS.md,
# "Issue 12: which chains to compose".
PACKABLE_MAX = 16 << 20

_SUBGRAPH_ATTRIBUTES = {5, 10}  # AttributeProto.GRAPH, GRAPHS: their bodies name outer tensors
_PREFIX = "layerserve.block"
# Kernels that read their weights in place, as the optimized copy stores them (already reordered to
# ONNX Runtime's blocked layout): the convolutions of a CNN, on CPUs where that layout is used.
_IN_PLACE_DOMAINS = frozenset({"com.microsoft.nchwc"})
# Bytes per element of ONNX's tensor element types (TensorProto.DataType); 4-bit types rounded up to a
# byte, and a type not listed counted as 8 (counted high rather than low).
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16,
                  16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}


def composed_path(graphs: Sequence[Path]) -> Path:
    """Where the composition of ``graphs`` lives: beside them, named by what it composes."""
    key = hashlib.sha256("\0".join(Path(graph).name for graph in graphs).encode()).hexdigest()[:24]
    return Path(graphs[0]).with_name(f"chain-{key}.onnx")


def compose(graphs: Sequence[Path]) -> Path:
    """One ONNX file that runs ``graphs`` (optimized copies in one folder) in order, made now unless a
    worker has made it already. Its inputs are what no earlier graph produces; its outputs the last
    graph's. ValueError for graphs it cannot join: in two folders, a subgraph-holding node (an ``If``
    body may read outer tensors by names this renames), or a tensor that two graphs both produce.
    Written under a name with this process's pid, then renamed: another worker never reads half a file.
    """
    paths = [Path(graph) for graph in graphs]
    if len(paths) < 2 or len({path.parent for path in paths}) != 1:
        raise ValueError("composing needs two or more graphs in one folder (their weights are found beside them)")
    target = composed_path(paths)
    if target.exists():
        return target
    models = [Model.FromString(path.read_bytes()) for path in paths]
    composed = Model()
    composed.CopyFrom(models[0])
    graph = composed.graph
    for name in ("node", "initializer", "input", "output", "value_info"):
        graph.ClearField(name)
    # From IR version 4 a weight need not be listed as an input (listed, ONNX Runtime takes it for one a
    # caller may override): the newest version among the graphs, so an old one's weights stay weights.
    composed.ir_version = max(int(model.ir_version) for model in models)
    produced: set[str] = set()
    declared: set[str] = set()
    for index, (path, model) in enumerate(zip(paths, models, strict=True)):
        _append(graph, model.graph, index, path.name, produced, declared, last=index == len(models) - 1,
                weights_as_inputs=composed.ir_version < 4)
    versions: dict[str, int] = {}
    for model in models:
        for opset in model.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), int(opset.version))
    composed.ClearField("opset_import")
    for domain, version in sorted(versions.items()):
        composed.opset_import.add(domain=domain, version=version)
    save(composed, target)
    return target


def packable_bytes(graph: Path) -> int:
    """The bytes of the weights ``graph``'s nodes read outside the in-place kernels: what a session of it
    may pack into a copy of its own, counted once per weight. An estimate: ONNX Runtime packs the weights
    of some kernels only, decides which as it builds the session, and may pad what it packs."""
    model = Model.FromString(Path(graph).read_bytes())
    sizes = {tensor.name: _tensor_bytes(tensor) for tensor in model.graph.initializer}
    read = {name for node in model.graph.node if node.domain not in _IN_PLACE_DOMAINS
            for name in node.input if name in sizes}
    return sum(sizes[name] for name in read)


def _tensor_bytes(tensor: message.Message) -> int:
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count * _ELEMENT_BYTES.get(int(tensor.data_type), 8)


def _append(graph: message.Message, own: message.Message, index: int, file: str, produced: set[str],
            declared: set[str], last: bool, weights_as_inputs: bool) -> None:
    """Add the graph ``own`` (block ``index`` of the chain, from ``file``) to ``graph``: its nodes, its
    weights and its declared shapes under private names, its inputs that nothing before produced as the
    composed graph's inputs (and its weights, where IR version 3 wants them listed), and its outputs as
    the composed graph's (``last``) or as declared shapes."""
    weights = {tensor.name for tensor in own.initializer}
    seams = {value.name for value in own.input if value.name not in weights} | {value.name for value in own.output}

    def private(name: str) -> str:
        return name if not name or name in seams else f"{_PREFIX}{index}/{name}"

    for value in own.input:
        if value.name in weights:  # IR version 3 lists its weights as inputs too
            if weights_as_inputs:
                graph.input.add().CopyFrom(value)
                graph.input[-1].name = private(value.name)
        elif value.name not in produced and value.name not in declared:
            graph.input.add().CopyFrom(value)
            declared.add(value.name)
    for node in own.node:
        if any(attribute.type in _SUBGRAPH_ATTRIBUTES for attribute in node.attribute):
            raise ValueError(f"{file}: node {node.name!r} ({node.op_type}) holds a subgraph")
        added = graph.node.add()
        added.CopyFrom(node)
        if node.name:  # node names are a namespace of their own, unique when given (ONNX Runtime checks)
            added.name = f"{_PREFIX}{index}/{node.name}"
        for names in (added.input, added.output):
            for position, name in enumerate(names):
                names[position] = private(name)
        for name in added.output:
            if name and name in produced:
                raise ValueError(f"{file}: tensor {name!r} is produced by an earlier block too")
            if name:
                produced.add(name)
    for tensor in own.initializer:
        graph.initializer.add().CopyFrom(tensor)
        graph.initializer[-1].name = private(tensor.name)
    for value in own.value_info:
        graph.value_info.add().CopyFrom(value)
        graph.value_info[-1].name = private(value.name)
    # A seam's declared shape (at a native seam, its blocked channel count) stays known inside.
    (graph.output if last else graph.value_info).extend(own.output)
